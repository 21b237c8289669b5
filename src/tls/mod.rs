//! TLS material and policies.
//!
//! `material` reads certificate chains and keys and answers questions about them (which names,
//! until when, does the key match). `policy` turns material into the `rustls::ServerConfig` that a
//! handshake uses. `certificate_cache` lets a reload reuse what an earlier load parsed from
//! unchanged files. `development` makes the self-signed certificate that the shipped demo config
//! asks for.

pub mod certificate_cache;
pub mod client_auth;
pub mod client_certificate;
pub mod development;
pub mod key_schedule;
pub mod material;
pub mod policy;
pub mod revocation;
pub mod tickets;
