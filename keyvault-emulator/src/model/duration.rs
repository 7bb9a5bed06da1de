//! ISO 8601 durations as Key Vault's rotation policies carry them, and the
//! day every retention and policy period is counted in. A leaf of the
//! model: rotation policies and deletion both measure time with it.

use serde::{Deserialize, Serialize};

/// Key Vault counts retention and policy periods in days of this length.
pub(crate) const SECONDS_PER_DAY: i64 = 86_400;

/// An ISO 8601 duration as Key Vault's policies carry it (`P90D`, `P2M`,
/// `P1Y10D`, `PT48H`), kept in the caller's spelling and measured with
/// years of 365 days and months of 30.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub(crate) struct IsoDuration {
    text: String,
    seconds: i64,
}

impl IsoDuration {
    /// The length, for the arithmetic the rules do.
    pub(crate) fn seconds(&self) -> i64 {
        self.seconds
    }

    /// The caller's spelling, which Key Vault echoes back.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

/// A policy duration that is not ISO 8601 (or overflows): the caller's text.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not an ISO 8601 duration")]
pub(crate) struct NotAnIsoDuration(String);

impl TryFrom<String> for IsoDuration {
    type Error = NotAnIsoDuration;

    fn try_from(text: String) -> Result<Self, NotAnIsoDuration> {
        match parse_iso_duration(&text) {
            Some(seconds) => Ok(Self { text, seconds }),
            None => Err(NotAnIsoDuration(text)),
        }
    }
}

impl From<IsoDuration> for String {
    fn from(duration: IsoDuration) -> Self {
        duration.text
    }
}

/// Seconds in `P[nY][nM][nW][nD][T[nH][nM][nS]]`; `None` unless at least
/// one part is present and every part is a whole number.
fn parse_iso_duration(text: &str) -> Option<i64> {
    let rest = text.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) if !time.is_empty() => (date, Some(time)),
        Some(_) => return None,
        None => (rest, None),
    };
    let date_units: &[(char, i64)] = &[
        ('Y', 365 * SECONDS_PER_DAY),
        ('M', 30 * SECONDS_PER_DAY),
        ('W', 7 * SECONDS_PER_DAY),
        ('D', SECONDS_PER_DAY),
    ];
    let time_units: &[(char, i64)] = &[('H', 3600), ('M', 60), ('S', 1)];
    let mut total: i64 = 0;
    let mut parts = 0;
    for (section, units) in [(Some(date), date_units), (time, time_units)] {
        let Some(mut section) = section else { continue };
        for &(unit, scale) in units {
            if let Some((number, tail)) = section.split_once(unit) {
                if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                total = total.checked_add(number.parse::<i64>().ok()?.checked_mul(scale)?)?;
                parts += 1;
                section = tail;
            }
        }
        if !section.is_empty() {
            return None;
        }
    }
    (parts > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(text: &str) -> IsoDuration {
        IsoDuration::try_from(text.to_owned()).expect("valid duration")
    }

    #[test]
    fn iso_durations_parse_as_key_vault_writes_them() {
        let day = SECONDS_PER_DAY;
        assert_eq!(duration("P90D").seconds(), 90 * day);
        assert_eq!(duration("P2M").seconds(), 60 * day);
        assert_eq!(duration("P1Y10D").seconds(), 375 * day);
        assert_eq!(duration("P1W").seconds(), 7 * day);
        assert_eq!(duration("PT48H").seconds(), 2 * day);
        assert_eq!(duration("P1DT1M").seconds(), day + 60);
        assert_eq!(duration("P2M").as_str(), "P2M");
        for bad in ["", "P", "90D", "PT", "P1.5D", "P-1D", "P1DT", "P1H", "PD", "P1D2"] {
            assert!(IsoDuration::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }
}
