//! Which CQL driver errors mean "not now" (retried, then
//! [`RelayStoreError::Unavailable`]) and which mean "not like this"
//! ([`RelayStoreError::Setup`]): see the parent module's "Errors and
//! retries". Also the reading of a conditional statement's outcome.

use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    MetadataError, NewSessionError, PrepareError, RequestAttemptError,
};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

use crate::relay::{RelayStoreError, StoreResult};

/// The column a conditional statement's result reports its outcome in.
const APPLIED: &str = "[applied]";

/// Whether a server error means "not now".
fn db_transient(error: &DbError) -> bool {
    matches!(
        error,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::ReadFailure { .. }
            | DbError::WriteFailure { .. }
            | DbError::ServerError
            | DbError::TruncateError
            | DbError::RateLimitReached { .. }
    )
}

/// Whether one attempt's failure means "not now".
fn attempt_transient(error: &RequestAttemptError) -> bool {
    match error {
        RequestAttemptError::DbError(db, _) => db_transient(db),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        // Serialization, a malformed answer, a prepared statement whose id
        // changed: retrying sends the same thing again.
        _ => false,
    }
}

fn connection_transient(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::ConnectionSetupRequestError(setup) => match setup.get_error() {
            // Bad credentials are `AuthenticationError`: not transient.
            ConnectionSetupRequestErrorKind::DbError(db, _) => db_transient(db),
            ConnectionSetupRequestErrorKind::BrokenConnection(_)
            | ConnectionSetupRequestErrorKind::UnableToAllocStreamId => true,
            _ => false,
        },
        ConnectionError::TranslationError(_) | ConnectionError::UseKeyspaceError(_) => false,
        // A connect timeout, a refused or reset connection.
        _ => true,
    }
}

fn pool_transient(error: &ConnectionPoolError) -> bool {
    match error {
        ConnectionPoolError::Broken { last_connection_error } => {
            connection_transient(last_connection_error)
        }
        ConnectionPoolError::NodeDisabledByHostFilter => false,
        _ => true,
    }
}

/// Whether a failed statement may succeed if sent again.
pub(super) fn execution_transient(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::LastAttemptError(attempt) => attempt_transient(attempt),
        ExecutionError::ConnectionPoolError(pool) => pool_transient(pool),
        ExecutionError::PrepareError(prepare) => prepare_transient(prepare),
        ExecutionError::RequestTimeout(_)
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        // A statement the driver refused, or no node to send it to: the
        // load balancing plan is empty only for a datacenter with no nodes.
        ExecutionError::BadQuery(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::UseKeyspaceError(_) => false,
        _ => true,
    }
}

pub(super) fn prepare_transient(error: &PrepareError) -> bool {
    match error {
        PrepareError::ConnectionPoolError(pool) => pool_transient(pool),
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_transient(first_attempt),
        // Nodes disagreed on a statement's id: the schema is changing.
        _ => true,
    }
}

pub(super) fn session_transient(error: &NewSessionError) -> bool {
    match error {
        NewSessionError::MetadataError(MetadataError::ConnectionPoolError(pool)) => {
            pool_transient(pool)
        }
        NewSessionError::EmptyKnownNodesList
        | NewSessionError::UseKeyspaceError(_)
        | NewSessionError::IllegalConfig(_) => false,
        // Names that did not resolve, metadata that could not be read.
        _ => true,
    }
}

pub(super) fn classify(transient: bool, detail: String) -> RelayStoreError {
    if transient {
        RelayStoreError::Unavailable(detail)
    } else {
        RelayStoreError::Setup(detail)
    }
}

/// Maps a driver error: transient failures to `Unavailable`, everything
/// else to `Setup`.
pub(super) fn execution_error(what: &str, error: &ExecutionError) -> RelayStoreError {
    classify(execution_transient(error), format!("{what}: {error}"))
}

pub(super) fn corrupt(what: &str, error: impl std::fmt::Display) -> RelayStoreError {
    RelayStoreError::Corrupt(format!("{what}: {error}"))
}

/// The outcome of a conditional statement: its `[applied]` column. ScyllaDB
/// answers with `[applied]` and the row's old values, Cassandra with
/// `[applied]` alone when applied; the column is found by name either way.
pub(super) fn applied(what: &str, result: QueryResult) -> StoreResult<bool> {
    let rows = result.into_rows_result().map_err(|e| corrupt(what, e))?;
    let (index, _) = rows
        .column_specs()
        .get_by_name(APPLIED)
        .ok_or_else(|| corrupt(what, "no [applied] column in a conditional result"))?;
    let row: Row = rows.first_row().map_err(|e| corrupt(what, e))?;
    match row.columns.get(index) {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(corrupt(what, format!("[applied] is {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use scylla::errors::{BadQuery, BrokenConnectionError, BrokenConnectionErrorKind};
    use scylla::serialize::SerializationError;
    use scylla::statement::Consistency;

    use super::*;

    fn db(error: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(error, "message".into()))
    }

    #[test]
    fn test_transient_server_answers_are_unavailable_and_schema_errors_are_setup() {
        let transient = [
            db(DbError::Unavailable { consistency: Consistency::Quorum, required: 2, alive: 1 }),
            db(DbError::Overloaded),
            db(DbError::IsBootstrapping),
            db(DbError::ReadTimeout {
                consistency: Consistency::Quorum,
                received: 1,
                required: 2,
                data_present: false,
            }),
            db(DbError::WriteTimeout {
                consistency: Consistency::Quorum,
                received: 1,
                required: 2,
                write_type: scylla::errors::WriteType::Cas,
            }),
            db(DbError::ServerError),
            ExecutionError::RequestTimeout(Duration::from_secs(10)),
            ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(
                BrokenConnectionError::from(BrokenConnectionErrorKind::WriteError(
                    std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                )),
            )),
            ExecutionError::ConnectionPoolError(ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectTimeout,
            }),
            ExecutionError::ConnectionPoolError(ConnectionPoolError::Initializing),
        ];
        for error in &transient {
            let mapped = execution_error("test", error);
            assert!(matches!(mapped, RelayStoreError::Unavailable(_)), "{error}: {mapped:?}");
            assert!(mapped.is_retryable());
        }
        let missing = RequestAttemptError::DbError(DbError::Invalid, "unconfigured table".into());
        let setup = [
            db(DbError::Invalid),
            db(DbError::SyntaxError),
            db(DbError::Unauthorized),
            db(DbError::AuthenticationError),
            ExecutionError::PrepareError(PrepareError::AllAttemptsFailed {
                first_attempt: missing,
            }),
            ExecutionError::BadQuery(BadQuery::SerializationError(SerializationError::new(
                std::fmt::Error,
            ))),
            ExecutionError::EmptyPlan,
        ];
        for error in &setup {
            let mapped = execution_error("test", error);
            assert!(matches!(mapped, RelayStoreError::Setup(_)), "{error}: {mapped:?}");
            assert!(!mapped.is_retryable());
        }
    }
}
