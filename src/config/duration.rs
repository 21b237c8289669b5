//! Durations written the way operators write them: `"500ms"`, `"30s"`, `"2m"`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration read from a human-readable string (`humantime` syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub const fn secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = humantime::parse_duration(&text).map_err(|err| {
            serde::de::Error::custom(format!(
                "expected a duration such as \"500ms\", \"30s\" or \"2m\", found {text:?} ({err})"
            ))
        })?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom("expected a duration greater than zero"));
        }
        Ok(Self(duration))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A duration that may be turned off: `"off"` or a duration such as `"30s"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

impl<'de> Deserialize<'de> for OptionalDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "off" {
            return Ok(Self(None));
        }
        let duration = humantime::parse_duration(&text).map_err(|err| {
            serde::de::Error::custom(format!(
                "expected \"off\" or a duration such as \"500ms\", \"30s\" or \"2m\", found {text:?} ({err})"
            ))
        })?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(
                "expected a duration greater than zero, or \"off\"",
            ));
        }
        Ok(Self(Some(duration)))
    }
}
