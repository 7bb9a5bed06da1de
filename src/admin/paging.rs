//! `?from=&to=&after=&limit=`: the paging query of the per-tenant,
//! time-ordered listings (records by ingestion time, the key-use audit by
//! the time of each call), and their opaque cursors: the last entry's time
//! and tie-break (a record id, a sequence), base64url.

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::reply::ApiError;
use crate::ingest::validate::is_valid_record_id;
use crate::storage::TimeRange;

/// Most entries one page returns.
pub const MAX_PAGE: usize = 1000;
/// Entries per page when `limit` is not given.
pub(super) const DEFAULT_PAGE: usize = 100;

/// `?from=&to=&after=&limit=` of a listing.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Earliest time included, RFC 3339.
    pub(super) from: Option<String>,
    /// First time excluded, RFC 3339.
    pub(super) to: Option<String>,
    /// The `next` of the previous page.
    pub(super) after: Option<String>,
    /// Entries per page, 1 to [`MAX_PAGE`].
    pub(super) limit: Option<usize>,
}

impl PageQuery {
    /// The range and page size asked for, or what is wrong with them;
    /// `tie_break` reads a cursor's tie-break back (`None`: not one of ours).
    pub(super) fn parse<C>(self, tie_break: impl Fn(&[u8]) -> Option<C>) -> Result<(TimeRange<C>, usize), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(invalid("invalid_limit", format!("limit must be 1 to {MAX_PAGE}, got {limit}")));
        }
        let from_ms = self.from.as_deref().map(|at| time("from", at)).transpose()?;
        let to_ms = self.to.as_deref().map(|at| time("to", at)).transpose()?;
        if let (Some(from), Some(to)) = (from_ms, to_ms)
            && from > to
        {
            return Err(invalid("invalid_range", "from is after to"));
        }
        let after = self.after.as_deref().map(|cursor| decode_cursor(cursor, &tie_break)).transpose()?;
        Ok((TimeRange { from_ms, to_ms, after }, limit))
    }
}

pub(super) fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// An RFC 3339 time as Unix ms.
fn time(name: &str, at: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(at).map(|at| at.timestamp_millis()).map_err(|e| {
        invalid("invalid_time", format!("{name} must be an RFC 3339 time such as 2026-12-01T00:00:00Z ({e})"))
    })
}

/// The opaque cursor after an entry at `at_ms` with `tie_break`.
pub fn cursor(at_ms: i64, tie_break: &[u8]) -> String {
    let mut raw = (at_ms.max(0) as u64).to_be_bytes().to_vec();
    raw.extend_from_slice(tie_break);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Reads a cursor back: the time and tie-break of the entry it follows.
/// Anything [`cursor`] did not make (not base64url, shorter than a time, a
/// time past `i64::MAX`, a tie-break `tie_break` refuses) is `invalid_cursor`;
/// what it accepts, [`cursor`] writes back as the same string (fuzzed:
/// `fuzz/fuzz_targets/listing_cursor.rs`).
pub fn decode_cursor<C>(cursor: &str, tie_break: impl Fn(&[u8]) -> Option<C>) -> Result<(i64, C), ApiError> {
    let bad = || invalid("invalid_cursor", "after must be the next of an earlier page");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let (at, rest) = raw.split_at_checked(8).ok_or_else(bad)?;
    let at = i64::try_from(u64::from_be_bytes(at.try_into().map_err(|_| bad())?)).map_err(|_| bad())?;
    Ok((at, tie_break(rest).ok_or_else(bad)?))
}

/// A listing cursor's tie-break: a valid record id.
pub fn record_id_of(raw: &[u8]) -> Option<String> {
    std::str::from_utf8(raw).ok().filter(|id| is_valid_record_id(id)).map(str::to_owned)
}

/// The page of `entries` (fetched one more than `limit`, to tell whether
/// another follows) and its `next` cursor, made by `next_of` from the
/// page's last entry; `None` on the last page.
pub(super) fn split_page<T>(
    mut entries: Vec<T>,
    limit: usize,
    next_of: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    if entries.len() <= limit {
        return (entries, None);
    }
    entries.truncate(limit);
    let next = entries.last().map(next_of);
    (entries, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        from: Option<&str>,
        to: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(TimeRange<u64>, usize), &'static str> {
        let q = PageQuery { from: from.map(Into::into), to: to.map(Into::into), after: after.map(Into::into), limit };
        q.parse(|raw| <[u8; 8]>::try_from(raw).ok().map(u64::from_be_bytes)).map_err(|e| e.code())
    }

    #[test]
    fn a_page_query_is_parsed_or_refused_with_its_reason() {
        let (range, limit) =
            parse(Some("2026-12-01T00:00:00Z"), Some("2026-12-01T01:00:00+01:00"), None, None).unwrap();
        assert_eq!(
            (range.from_ms, range.to_ms, limit),
            (Some(1_796_083_200_000), Some(1_796_083_200_000), DEFAULT_PAGE)
        );
        assert_eq!(parse(None, None, None, Some(1001)), Err("invalid_limit"));
        assert_eq!(parse(None, None, None, Some(0)), Err("invalid_limit"));
        assert_eq!(parse(Some("yesterday"), None, None, None), Err("invalid_time"));
        assert_eq!(parse(Some("2026-12-02T00:00:00Z"), Some("2026-12-01T00:00:00Z"), None, None), Err("invalid_range"));
        assert_eq!(parse(None, None, Some("!!"), None), Err("invalid_cursor"));
        assert_eq!(parse(None, None, Some("AAAA"), None), Err("invalid_cursor"), "shorter than a time");
        let next = cursor(42, &7u64.to_be_bytes());
        assert_eq!(parse(None, None, Some(&next), None).unwrap().0.after, Some((42, 7)), "a cursor decodes back");
        assert_eq!(parse(None, None, Some(&cursor(42, b"x")), None), Err("invalid_cursor"), "not a tie-break of ours");
        let past_i64 = URL_SAFE_NO_PAD.encode([0xff; 16]);
        assert_eq!(parse(None, None, Some(&past_i64), None), Err("invalid_cursor"), "a time past i64::MAX");
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_more_follow() {
        assert_eq!(split_page(vec![1, 2], 2, |n| n.to_string()), (vec![1, 2], None));
        assert_eq!(split_page(vec![1, 2, 3], 2, |n| n.to_string()), (vec![1, 2], Some("2".to_owned())));
    }
}
