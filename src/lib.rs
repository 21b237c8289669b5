//! gatehouse: a TLS-terminating edge proxy for app environments.
//!
//! Two flows shape the code:
//!
//! * **configuration** (cold): `config` reads TOML files into typed values, `snapshot` validates
//!   and compiles them into one immutable [`snapshot::Snapshot`], which `server` holds in an
//!   `ArcSwap`;
//! * **a request** (hot): `server` accepts and terminates TLS (`tls` policies chosen by SNI),
//!   `route` maps the host to an environment, `proxy` forwards to an app instance and streams the
//!   answer back, `pages` holds gatehouse's own answers.

pub mod access;
pub mod cli;
pub mod config;
pub mod explain;
pub mod headers;
pub mod logs;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod rate_limit;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod watch;
