//! Relay-style cursor pagination over a keyset, never `OFFSET`.
//!
//! A page is asked for with [`PageRequest`] (`first`, `after`) and answered with [`Page`]
//! (`items`, `total_count`, `has_next_page`, `end_cursor`). Cursors are opaque to clients:
//! URL-safe base64 of the last row's sort key — a timestamp, an id and, where the id alone is
//! not unique (summary rows), a tie-breaker. Each query orders by that key (newest first) and
//! continues strictly after the cursor, so pages stay stable while rows are being added.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// The largest page a client may ask for; larger requests are capped to it.
pub const MAX_PAGE_SIZE: i64 = 100;
/// The page size when none (or a size below 1) is asked for.
pub const DEFAULT_PAGE_SIZE: i64 = 10;

/// One page of results.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// All rows matching the filters, across every page.
    pub total_count: i64,
    pub has_next_page: bool,
    /// The cursor of the last item; pass it as `after` for the next page.
    pub end_cursor: Option<String>,
    /// Each item's own cursor, in item order (Relay edges carry one each).
    #[serde(skip)]
    pub cursors: Vec<String>,
}

impl<T> Page<T> {
    pub fn empty() -> Self {
        Page {
            items: Vec::new(),
            total_count: 0,
            has_next_page: false,
            end_cursor: None,
            cursors: Vec::new(),
        }
    }

    /// Changes the items, keeping the paging information.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            total_count: self.total_count,
            has_next_page: self.has_next_page,
            end_cursor: self.end_cursor,
            cursors: self.cursors,
        }
    }
}

/// The sort key of one row, as carried by a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Microsecond precision, as Postgres stores it, so a round trip is exact.
    pub at: DateTime<Utc>,
    pub id: Uuid,
    /// A tie-breaker for rows whose key is more than one id (empty otherwise).
    pub tie: String,
}

/// A cursor that was not produced by us (or has been altered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid page cursor")]
pub struct InvalidCursor;

const CURSOR_VERSION: &str = "c1";

impl Cursor {
    pub fn new(at: DateTime<Utc>, id: Uuid) -> Self {
        Cursor {
            at,
            id,
            tie: String::new(),
        }
    }

    pub fn with_tie(at: DateTime<Utc>, id: Uuid, tie: impl Into<String>) -> Self {
        Cursor {
            at,
            id,
            tie: tie.into(),
        }
    }

    /// The opaque form handed to clients.
    pub fn encode(&self) -> String {
        let raw = format!(
            "{CURSOR_VERSION}|{}|{}|{}",
            self.at.timestamp_micros(),
            self.id.simple(),
            self.tie
        );
        base64url_encode(raw.as_bytes())
    }

    pub fn decode(text: &str) -> Result<Self, InvalidCursor> {
        let bytes = base64url_decode(text.trim()).ok_or(InvalidCursor)?;
        let raw = String::from_utf8(bytes).map_err(|_| InvalidCursor)?;
        let mut parts = raw.splitn(4, '|');
        if parts.next() != Some(CURSOR_VERSION) {
            return Err(InvalidCursor);
        }
        let micros: i64 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or(InvalidCursor)?;
        let at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or(InvalidCursor)?;
        let id = parts
            .next()
            .and_then(|p| Uuid::parse_str(p).ok())
            .ok_or(InvalidCursor)?;
        let tie = parts.next().ok_or(InvalidCursor)?.to_string();
        Ok(Cursor { at, id, tie })
    }
}

/// What page a client asks for: at most `first` items after the `after` cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    first: i64,
    after: Option<Cursor>,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            first: DEFAULT_PAGE_SIZE,
            after: None,
        }
    }
}

impl PageRequest {
    /// From a client's arguments: `first` above [`MAX_PAGE_SIZE`] is capped, below 1 (or
    /// missing) becomes [`DEFAULT_PAGE_SIZE`]; `after` must be a cursor we handed out.
    pub fn new(first: Option<i64>, after: Option<&str>) -> Result<Self, InvalidCursor> {
        let after = match after {
            Some(text) if !text.trim().is_empty() => Some(Cursor::decode(text)?),
            _ => None,
        };
        Ok(PageRequest {
            first: clamp_page_size(first),
            after,
        })
    }

    /// The first page of `first` items.
    pub fn first(first: i64) -> Self {
        PageRequest {
            first: clamp_page_size(Some(first)),
            after: None,
        }
    }

    /// The page after `cursor`.
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    pub fn size(&self) -> i64 {
        self.first
    }

    pub fn cursor(&self) -> Option<&Cursor> {
        self.after.as_ref()
    }

    /// How many rows to fetch: one more than the page, to learn whether another follows.
    pub(crate) fn fetch_limit(&self) -> i64 {
        self.first + 1
    }

    pub(crate) fn after_at(&self) -> Option<DateTime<Utc>> {
        self.after.as_ref().map(|c| c.at)
    }

    pub(crate) fn after_id(&self) -> Option<Uuid> {
        self.after.as_ref().map(|c| c.id)
    }

    pub(crate) fn after_tie(&self) -> Option<String> {
        self.after.as_ref().map(|c| c.tie.clone())
    }

    /// Turns the fetched rows (up to `fetch_limit`) into a page.
    pub(crate) fn finish<T>(
        &self,
        mut rows: Vec<T>,
        total_count: i64,
        key: impl Fn(&T) -> Cursor,
    ) -> Page<T> {
        let has_next_page = rows.len() as i64 > self.first;
        rows.truncate(self.first as usize);
        let cursors: Vec<String> = rows.iter().map(|row| key(row).encode()).collect();
        Page {
            items: rows,
            total_count,
            has_next_page,
            end_cursor: cursors.last().cloned(),
            cursors,
        }
    }
}

/// The page size rule: `> MAX_PAGE_SIZE` → `MAX_PAGE_SIZE`, `< 1` or missing → default.
pub fn clamp_page_size(first: Option<i64>) -> i64 {
    match first {
        Some(n) if n > MAX_PAGE_SIZE => MAX_PAGE_SIZE,
        Some(n) if n >= 1 => n,
        _ => DEFAULT_PAGE_SIZE,
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// URL-safe base64 without padding (RFC 4648 §5).
fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for s in sextets.iter().take(chunk.len() + 1) {
            out.push(ALPHABET[*s as usize] as char);
        }
    }
    out
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut values = Vec::with_capacity(text.len());
    for c in text.bytes() {
        values.push(ALPHABET.iter().position(|a| *a == c)? as u32);
    }
    let mut out = Vec::with_capacity(values.len() * 3 / 4);
    for chunk in values.chunks(4) {
        let mut n = 0u32;
        for (i, v) in chunk.iter().enumerate() {
            n |= v << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64url_encode(&data);
            assert!(!text.contains('=') && !text.contains('+') && !text.contains('/'));
            assert_eq!(base64url_decode(&text).unwrap(), data);
        }
        assert_eq!(base64url_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url_encode(b"fo"), "Zm8");
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let at = DateTime::<Utc>::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let cursor = Cursor::with_tie(at, Uuid::new_v4(), "WordOrder|Easy");
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        assert_eq!(Cursor::decode("not a cursor"), Err(InvalidCursor));
        assert_eq!(
            Cursor::decode(&base64url_encode(b"c1|x|y|")),
            Err(InvalidCursor)
        );
        assert_eq!(Cursor::decode(""), Err(InvalidCursor));
    }

    #[test]
    fn page_sizes_are_clamped() {
        assert_eq!(clamp_page_size(None), DEFAULT_PAGE_SIZE);
        assert_eq!(clamp_page_size(Some(0)), DEFAULT_PAGE_SIZE);
        assert_eq!(clamp_page_size(Some(-5)), DEFAULT_PAGE_SIZE);
        assert_eq!(clamp_page_size(Some(1)), 1);
        assert_eq!(clamp_page_size(Some(100)), 100);
        assert_eq!(clamp_page_size(Some(101)), MAX_PAGE_SIZE);
        let request = PageRequest::new(Some(1000), Some("")).unwrap();
        assert_eq!(request.size(), 100);
        assert!(request.cursor().is_none());
    }
}
