//! The chaos harness: seeded fault schedules over whole processes (3 to 6
//! device nodes and a relay, each its own OS process on its own data
//! directory), judged by a Jepsen-style checker, with shrinking of failing
//! schedules. `concord-chaos` is the driver, `concord-chaos-node` the child;
//! `docs/reliability.md` has the control protocol, the faults and the
//! results of the long run.
//!
//! - [`schedule`]: what a seed draws (workload and faults), and schedule files;
//! - [`run`]: plays a schedule against real processes, then the quiet phase;
//! - [`check`]: the checker's counts;
//! - [`shrink`]: cuts a failing schedule down;
//! - [`child`], [`protocol`], [`process`], [`proxy`]: the child, the control
//!   protocol, the driver's side of a child, the lossy link.

pub mod check;
pub mod child;
pub mod cli;
pub mod history;
pub mod process;
pub mod protocol;
pub mod proxy;
pub mod run;
pub mod schedule;
pub mod shrink;
mod steps;
