//! The TOML contract: what operators write, how it is read, and how mistakes are reported.
//!
//! `load` reads the main file and every environment file into typed values (`schema`), keeping
//! the source text so that later validation can point at a line. Nothing here is used on the
//! request path: `crate::snapshot` compiles the result into the runtime view.

pub mod duration;
pub mod error;
pub mod load;
pub mod schema;
pub mod size;

pub use error::{ConfigError, ConfigErrors};
pub use load::{LoadedConfig, SourceFile, load};
