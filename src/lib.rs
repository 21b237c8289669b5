//! gatehouse: a TLS-terminating edge proxy for app environments.
//!
//! Two flows shape the code:
//!
//! * **configuration** (cold): `config` reads TOML files into typed values, `snapshot` validates
//!   and compiles them into one immutable, plain-data [`snapshot::Snapshot`]; `live` pairs it with
//!   the state kept across reloads (metrics, rate limiters, upstream groups) in one `reconcile`
//!   step, and `server` swaps the pair ([`live::Installed`]) through an `ArcSwap`;
//! * **a request** (hot): `server` accepts and terminates TLS (`tls` policies chosen by SNI) and
//!   records what the connection is (`connection`); `proxy` admits the request (`route` maps the
//!   host to an environment, `access` decides), rewrites it and hands it to `upstream` (instance
//!   choice, pooled connections, safe retries), streams the answer back (`body` counts both
//!   bodies), and `pages` holds gatehouse's own answers.
//! * **upstream upkeep** (background): each environment's `upstream` group runs its health checks,
//!   re-resolves host names and closes idle connections, and survives reloads that leave it alone.

pub mod access;
pub mod body;
pub mod cli;
pub mod client_prefix;
pub mod config;
pub mod connection;
pub mod explain;
pub mod files;
pub mod headers;
pub mod linger;
pub mod live;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod rate_limit;
pub mod replay;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod watch;
