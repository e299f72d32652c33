//! The store's prepared statements, prepared on first use (see the parent
//! module's docs), and the two ways they run: [`CqlRelayStore::execute`]
//! for writes and conditional statements, [`CqlRelayStore::select`] for
//! reads, page by page. Each page and each write goes through the store's
//! retry loop.

use std::ops::ControlFlow;

use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use super::errors::{classify, corrupt, execution_error, prepare_transient};
use super::CqlRelayStore;
use crate::relay::{RelayStoreError, StoreResult};

/// Blob chunks per page when a blob is read: one mebibyte a page, so a
/// blob is its manifest and then one or two pages.
const CHUNK_PAGE: i32 = 4;

/// Envelopes per page of a range read. An envelope is at most 60 KiB, so a
/// page is at most 7.5 MiB, under the 16 MiB frame Cassandra accepts by
/// default; a typical envelope is a few hundred bytes.
const ENVELOPE_PAGE: i32 = 128;

/// Rows per page of the small tables (bucket entries, room genesis records).
const ROW_PAGE: i32 = 1000;

/// Governance changes per page when a room's are read. A change is at most
/// 32 KiB (`MAX_GOV_CHANGE_BYTES`), so a page is at most 8 MiB, under the
/// 16 MiB frame Cassandra accepts by default; a typical change is a few
/// hundred bytes.
const GOV_CHANGE_PAGE: i32 = 256;

/// Every statement the store runs, prepared once per store.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) put_room: PreparedStatement,
    pub(super) rooms: PreparedStatement,
    pub(super) put_bucket: PreparedStatement,
    pub(super) buckets: PreparedStatement,
    pub(super) put_envelope: PreparedStatement,
    pub(super) overwrite_envelope: PreparedStatement,
    pub(super) envelopes_from_start: PreparedStatement,
    pub(super) envelopes_after: PreparedStatement,
    pub(super) envelopes_before: PreparedStatement,
    pub(super) put_chunk: PreparedStatement,
    pub(super) put_manifest: PreparedStatement,
    pub(super) manifest: PreparedStatement,
    pub(super) chunks: PreparedStatement,
    pub(super) erase_manifest: PreparedStatement,
    pub(super) erase_chunks: PreparedStatement,
    pub(super) put_governance: PreparedStatement,
    pub(super) governance: PreparedStatement,
}

impl CqlRelayStore {
    /// The prepared statements, prepared now if this is the first use.
    pub(super) async fn statements(&self) -> StoreResult<&Statements> {
        self.statements.get_or_try_init(|| self.prepare_all()).await
    }

    async fn prepare_all(&self) -> StoreResult<Statements> {
        let ks = &self.keyspace;
        let envelopes =
            format!("SELECT key, envelope FROM {ks}.envelopes WHERE room = ? AND bucket = ?");
        let (put_room, rooms, put_bucket, buckets, put_envelope) = futures::try_join!(
            self.prepare(
                format!("INSERT INTO {ks}.rooms (room, genesis) VALUES (?, ?) IF NOT EXISTS"),
                None
            ),
            self.prepare(format!("SELECT genesis FROM {ks}.rooms"), Some(ROW_PAGE)),
            self.prepare(format!("INSERT INTO {ks}.buckets (room, bucket) VALUES (?, ?)"), None),
            self.prepare(format!("SELECT bucket FROM {ks}.buckets WHERE room = ?"), Some(ROW_PAGE)),
            self.prepare(
                format!(
                    "INSERT INTO {ks}.envelopes (room, bucket, key, envelope) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                None
            ),
        )?;
        let (overwrite_envelope, envelopes_from_start, envelopes_after, envelopes_before) = futures::try_join!(
            self.prepare(
                format!(
                    "INSERT INTO {ks}.envelopes (room, bucket, key, envelope) VALUES (?, ?, ?, ?)"
                ),
                None
            ),
            self.prepare(format!("{envelopes} LIMIT ?"), Some(ENVELOPE_PAGE)),
            self.prepare(format!("{envelopes} AND key > ? LIMIT ?"), Some(ENVELOPE_PAGE)),
            self.prepare(
                format!("{envelopes} AND key < ? ORDER BY key DESC LIMIT ?"),
                Some(ENVELOPE_PAGE)
            ),
        )?;
        let (put_chunk, put_manifest, manifest, chunks, erase_manifest, erase_chunks) = futures::try_join!(
            self.prepare(
                format!("INSERT INTO {ks}.blobs (room, hash, chunk, data) VALUES (?, ?, ?, ?)"),
                None
            ),
            self.prepare(
                format!(
                    "INSERT INTO {ks}.blobs (room, hash, chunk, data, chunks, len) \
                     VALUES (?, ?, 0, ?, ?, ?) IF NOT EXISTS"
                ),
                None
            ),
            self.prepare(
                format!(
                    "SELECT data, chunks, len FROM {ks}.blobs \
                     WHERE room = ? AND hash = ? AND chunk = 0"
                ),
                None
            ),
            self.prepare(
                format!(
                    "SELECT chunk, data FROM {ks}.blobs WHERE room = ? AND hash = ? AND chunk > 0"
                ),
                Some(CHUNK_PAGE)
            ),
            self.prepare(
                format!(
                    "DELETE FROM {ks}.blobs WHERE room = ? AND hash = ? AND chunk = 0 IF EXISTS"
                ),
                None
            ),
            self.prepare(
                format!("DELETE FROM {ks}.blobs WHERE room = ? AND hash = ? AND chunk > 0"),
                None
            ),
        )?;
        let (put_governance, governance) = futures::try_join!(
            self.prepare(
                format!(
                    "INSERT INTO {ks}.governance (room, head, change) VALUES (?, ?, ?) \
                     IF NOT EXISTS"
                ),
                None
            ),
            self.prepare(
                format!("SELECT change FROM {ks}.governance WHERE room = ?"),
                Some(GOV_CHANGE_PAGE)
            ),
        )?;
        Ok(Statements {
            put_room,
            rooms,
            put_bucket,
            buckets,
            put_envelope,
            overwrite_envelope,
            envelopes_from_start,
            envelopes_after,
            envelopes_before,
            put_chunk,
            put_manifest,
            manifest,
            chunks,
            erase_manifest,
            erase_chunks,
            put_governance,
            governance,
        })
    }

    async fn prepare(&self, text: String, page: Option<i32>) -> StoreResult<PreparedStatement> {
        let mut prepared = self
            .retry
            .run("prepare", || {
                let text = text.clone();
                async move {
                    self.session.prepare(text).await.map_err(|e| {
                        classify(prepare_transient(&e), format!("prepare statement: {e}"))
                    })
                }
            })
            .await?;
        if let Some(page) = page {
            prepared.set_page_size(page);
        }
        Ok(prepared)
    }

    /// Executes a statement that returns no rows, or a conditional one
    /// whose outcome the caller reads with [`applied`](super::errors::applied).
    pub(super) async fn execute(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow + Sync,
    ) -> StoreResult<QueryResult> {
        self.retry
            .run(what, || async {
                self.session
                    .execute_unpaged(statement, &values)
                    .await
                    .map_err(|e| execution_error(what, &e))
            })
            .await
    }

    /// Up to `limit` rows of a `SELECT`, page by page (each page retried on
    /// its own), decoded as `R`.
    pub(super) async fn select<R>(
        &self,
        what: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow + Sync,
        limit: usize,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'frame> DeserializeRow<'frame, 'frame> + Send,
    {
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        while out.len() < limit {
            let (result, next) = self
                .retry
                .run(what, || {
                    let paging = paging.clone();
                    let values = &values;
                    async move {
                        self.session
                            .execute_single_page(statement, values, paging)
                            .await
                            .map_err(|e| execution_error(what, &e))
                    }
                })
                .await?;
            let rows = result.into_rows_result().map_err(|e| corrupt(what, e))?;
            // A type mismatch means the table is not the one this store
            // creates.
            let typed =
                rows.rows::<R>().map_err(|e| RelayStoreError::Setup(format!("{what}: {e}")))?;
            for row in typed {
                out.push(row.map_err(|e| corrupt(what, e))?);
            }
            match next.into_paging_control_flow() {
                ControlFlow::Continue(state) => paging = state,
                ControlFlow::Break(()) => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}
