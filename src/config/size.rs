//! Sizes written the way operators write them: `1048576`, `"512KiB"`, `"100MiB"`, `"1GiB"`.

use serde::{Deserialize, Deserializer};

/// A number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum Written {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for ConfigSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(Self(bytes)),
            Written::Text(text) => parse(&text).map(Self).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "expected a size such as 1048576, \"512KiB\", \"100MiB\" or \"1GiB\", found {text:?}"
                ))
            }),
        }
    }
}

fn parse(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse("512"), Some(512));
        assert_eq!(parse("512KiB"), Some(512 * 1024));
        assert_eq!(parse("100 MiB"), Some(100 * 1024 * 1024));
        assert_eq!(parse("1GB"), Some(1_000_000_000));
        assert_eq!(parse("1.5MiB"), None);
        assert_eq!(parse("10 miles"), None);
        assert_eq!(parse("99999999999999GiB"), None);
    }
}
