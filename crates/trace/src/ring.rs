//! Pages of a tracefs per-CPU ring buffer, as `per_cpu/cpuN/trace_pipe_raw`
//! hands them out: a page header (timestamp, commit) and compressed event
//! headers (`events/header_event`): 5 bits of type or length, 27 bits of
//! time delta, then an optional 32-bit word. The layout is the kernel's
//! `kernel/trace/ring_buffer.c`; libtraceevent's `kbuffer-parse.c` reads it
//! the same way.

use crate::TraceError;
use crate::format::{Field, Format, read_u64};

/// `type_len` of a padding (or discarded) event.
const PADDING: u32 = 29;
/// `type_len` of a time extension: delta bits 27..59 in the next word.
const TIME_EXTEND: u32 = 30;
/// `type_len` of an absolute timestamp.
const TIME_STAMP: u32 = 31;
/// The commit word's low bits are the bytes of data on the page.
const COMMIT_MASK: u64 = (1 << 27) - 1;
/// The commit word's flag: events were lost before this page.
const MISSED_EVENTS: u64 = 1 << 31;
/// Bits of an absolute timestamp a TIME_STAMP event carries.
const TS_MSB: u64 = !((1 << 59) - 1);

/// Where the page header's fields sit (`events/header_page`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLayout {
    timestamp: Field,
    commit: Field,
    data: usize,
}

impl PageLayout {
    /// From the text of `events/header_page`.
    pub fn parse(text: &str) -> Result<PageLayout, TraceError> {
        let f = Format::parse("events/header_page", text)?;
        Ok(PageLayout {
            timestamp: f.field("timestamp")?,
            commit: f.field("commit")?,
            data: f.field("data")?.offset,
        })
    }
}

/// What a page said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageInfo {
    /// Records handed to the callback.
    pub records: usize,
    /// The kernel flagged events lost before this page.
    pub missed_events: bool,
}

/// Walks one page, calling `record(timestamp_ns, bytes)` for each event
/// record in order. A page that contradicts itself (a length running off
/// its end) is an error naming the offset; the records before it were
/// delivered.
pub fn parse_page(
    page: &[u8],
    layout: &PageLayout,
    mut record: impl FnMut(u64, &[u8]),
) -> Result<PageInfo, TraceError> {
    let short = |offset: usize| TraceError::Page {
        offset,
        detail: "shorter than its header says".into(),
    };
    let mut ts = read_u64(page, layout.timestamp).ok_or_else(|| short(0))?;
    let commit = read_u64(page, layout.commit).ok_or_else(|| short(layout.commit.offset))?;
    let len = usize::try_from(commit & COMMIT_MASK).map_err(|_| short(layout.commit.offset))?;
    let data = page
        .get(layout.data..layout.data.saturating_add(len))
        .ok_or_else(|| short(layout.data))?;
    let mut info = PageInfo {
        records: 0,
        missed_events: commit & MISSED_EVENTS != 0,
    };
    let word = |at: usize| -> Result<u32, TraceError> {
        data.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| short(layout.data + at))
    };
    let mut at = 0;
    while at + 4 <= data.len() {
        let header = word(at)?;
        let type_len = header & 0x1f;
        let delta = u64::from(header >> 5);
        match type_len {
            PADDING => {
                if delta == 0 {
                    break; // the rest of the page is padding
                }
                // A discarded event (an event filter said no): skip it.
                at = at
                    .checked_add(4 + word(at + 4)? as usize)
                    .ok_or_else(|| short(at))?;
            }
            TIME_EXTEND => {
                ts = ts.wrapping_add((u64::from(word(at + 4)?) << 27) + delta);
                at += 8;
            }
            TIME_STAMP => {
                let mut abs = (u64::from(word(at + 4)?) << 27) | delta;
                abs |= ts & TS_MSB;
                if abs < ts && ts & TS_MSB != 0 {
                    abs = abs.wrapping_add(1 << 59);
                }
                ts = abs;
                at += 8;
            }
            0 => {
                let length = word(at + 4)? as usize;
                let body = data
                    .get(at + 8..(at + 4).saturating_add(length))
                    .ok_or_else(|| short(at))?;
                ts = ts.wrapping_add(delta);
                record(ts, body);
                info.records += 1;
                at = (at + 4).saturating_add(length.next_multiple_of(4));
            }
            n => {
                let length = n as usize * 4;
                let body = data.get(at + 4..at + 4 + length).ok_or_else(|| short(at))?;
                ts = ts.wrapping_add(delta);
                record(ts, body);
                info.records += 1;
                at += 4 + length;
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const HEADER_PAGE: &str = include_str!("../testdata/header_page");

    /// Builds a page the way the kernel lays one out.
    pub(crate) struct PageBuilder {
        bytes: Vec<u8>,
    }

    impl PageBuilder {
        pub(crate) fn new(timestamp: u64) -> PageBuilder {
            let mut bytes = vec![0u8; 16];
            bytes[..8].copy_from_slice(&timestamp.to_ne_bytes());
            PageBuilder { bytes }
        }
        fn header(&mut self, type_len: u32, delta: u32) {
            self.bytes
                .extend_from_slice(&(type_len | (delta << 5)).to_ne_bytes());
        }
        pub(crate) fn record(mut self, delta: u32, body: &[u8]) -> PageBuilder {
            let padded = body.len().next_multiple_of(4);
            if padded <= 28 * 4 {
                self.header((padded / 4) as u32, delta);
            } else {
                self.header(0, delta);
                self.bytes
                    .extend_from_slice(&((padded + 4) as u32).to_ne_bytes());
            }
            self.bytes.extend_from_slice(body);
            self.bytes.resize(self.bytes.len() + padded - body.len(), 0);
            self
        }
        pub(crate) fn discarded(mut self, bytes: u32) -> PageBuilder {
            self.header(PADDING, 1);
            self.bytes.extend_from_slice(&bytes.to_ne_bytes());
            self.bytes
                .resize(self.bytes.len() + bytes as usize - 4, 0xee);
            self
        }
        pub(crate) fn extend(mut self, delta: u64) -> PageBuilder {
            self.header(TIME_EXTEND, (delta & ((1 << 27) - 1)) as u32);
            self.bytes
                .extend_from_slice(&((delta >> 27) as u32).to_ne_bytes());
            self
        }
        pub(crate) fn finish(mut self, missed: bool) -> Vec<u8> {
            let len = (self.bytes.len() - 16) as u64 | if missed { MISSED_EVENTS } else { 0 };
            self.bytes[8..16].copy_from_slice(&len.to_ne_bytes());
            self.bytes.resize(4096, 0);
            self.bytes
        }
    }

    type Walked = (Vec<(u64, Vec<u8>)>, Result<PageInfo, TraceError>);

    fn walk(page: &[u8]) -> Walked {
        let layout = PageLayout::parse(HEADER_PAGE).unwrap();
        let mut out = Vec::new();
        let info = parse_page(page, &layout, |ts, b| out.push((ts, b.to_vec())));
        (out, info)
    }

    #[test]
    fn records_come_out_in_order_with_their_timestamps() {
        let big = vec![7u8; 200];
        let page = PageBuilder::new(1_000)
            .record(5, &[1, 2, 3, 4, 5, 6, 7, 8])
            .discarded(12)
            .extend(1 << 30)
            .record(0, &big)
            .record(3, &[9; 4])
            .finish(false);
        let (out, info) = walk(&page);
        let info = info.unwrap();
        assert_eq!(info.records, 3);
        assert!(!info.missed_events);
        assert_eq!(out[0], (1_005, vec![1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(out[1].0, 1_005 + (1 << 30));
        assert_eq!(out[1].1.len(), 200);
        assert_eq!(out[2], (1_008 + (1 << 30), vec![9; 4]));
    }

    #[test]
    fn the_missed_events_flag_is_reported() {
        let page = PageBuilder::new(0).record(1, &[0; 8]).finish(true);
        assert!(walk(&page).1.unwrap().missed_events);
    }

    #[test]
    fn a_length_running_off_the_page_is_an_error_not_a_panic() {
        let mut page = PageBuilder::new(0).record(1, &[0; 8]).finish(false);
        page[8..16].copy_from_slice(&5000u64.to_ne_bytes());
        assert!(walk(&page).1.is_err());
        let mut page = PageBuilder::new(0).record(1, &[0; 8]).finish(false);
        // a type-0 record claiming 4 KiB
        page[16..20].copy_from_slice(&(1u32 << 5).to_ne_bytes());
        page[20..24].copy_from_slice(&4096u32.to_ne_bytes());
        page[8..16].copy_from_slice(&12u64.to_ne_bytes());
        assert!(walk(&page).1.is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_pages_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4200)) {
            let _ = walk(&bytes);
        }
    }
}
