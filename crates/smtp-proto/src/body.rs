//! Message bodies: the DATA transparency procedure and BDAT chunk framing.
//!
//! DATA (RFC 5321 §4.1.1.4) sends the message as lines and ends it with a
//! line holding a single `"."`; a line the sender starts with `"."` gets a
//! second dot in front (dot-stuffing, RFC 5321 §4.5.2). BDAT (RFC 3030)
//! sends chunks of a declared size and needs neither.
//!
//! | type | side | does |
//! | --- | --- | --- |
//! | [`DataDecoder`] | server | finds `<CRLF>.<CRLF>`, removes stuffing dots, streams the body, reports what it saw |
//! | [`BdatDecoder`] | server | reads exactly the octets a `BDAT n` announced |
//! | [`BodyCheck`] | server | reports the same facts as [`DataDecoder`] for bodies that arrive by BDAT |
//! | [`DataEncoder`] | client | turns any bytes into CRLF lines and dot-stuffs them for DATA |
//!
//! # SMTP smuggling
//!
//! A receiver that accepts something other than `<CRLF>.<CRLF>` as the end
//! of DATA (for example `<LF>.<LF>` or `<LF>.<CRLF>`) can be made to see
//! the end of a message where the previous hop saw message text, and to
//! read the rest as new SMTP commands (CVE-2023-51764 and relatives).
//! [`DataDecoder`] ends DATA at `<CRLF>.<CRLF>` and at nothing else: a bare
//! CR or a bare LF never ends a line, so a dot after one is plain text. It
//! reports bare CR and bare LF in [`BodySummary`], so a server can refuse
//! such messages outright (smtp-server answers `550 5.5.2`), or accept them
//! knowing that they will be repaired on relay.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::LazyLock;

use memchr::{memchr2, memmem};

use crate::limits::TEXT_LINE_MAX;

/// What [`DataDecoder`] and [`BodyCheck`] saw in a message body.
///
/// All facts are about the body as delivered to the handler: after dot
/// unstuffing, before any truncation at the size limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodySummary {
    /// Octets of the body, counting the `<CRLF>` in front of the final
    /// `"."` of DATA and not counting the stuffing dots. When
    /// [`too_large`](Self::too_large) is set this is the whole size the peer
    /// sent, although only the first `max_size` octets were yielded.
    pub size: u64,
    /// The body is larger than the decoder's `max_size`: the handler saw
    /// only a prefix and the message should be refused with `552 5.3.4`
    /// (RFC 5321 §4.5.3.1.10, RFC 1870 §6).
    pub too_large: bool,
    /// A CR that is not followed by LF.
    pub bare_cr: bool,
    /// An LF that does not follow a CR.
    pub bare_lf: bool,
    /// A line longer than 1000 octets including its `<CRLF>` (RFC 5321
    /// §4.5.3.1.6, [`TEXT_LINE_MAX`]). Only `<CRLF>` ends a line.
    pub long_line: bool,
    /// A NUL octet, which RFC 5322 §3.5 does not allow in a message.
    pub nul: bool,
    /// An octet above 127, which needs `BODY=8BITMIME` (RFC 6152) or
    /// `BODY=BINARYMIME` (RFC 3030).
    pub eight_bit: bool,
}

impl BodySummary {
    /// Whether the body holds a bare CR or a bare LF: the signature of an
    /// SMTP smuggling attempt, or of a broken client.
    pub fn has_bare_line_ending(&self) -> bool {
        self.bare_cr || self.bare_lf
    }
}

/// Line-level scanning shared by DATA and BDAT: line lengths, bare line
/// endings, NUL and 8-bit octets.
///
/// Clean text (lines that end with `<CRLF>` and hold no other CR or LF)
/// is checked in bulk, a run of lines at a time, by
/// [`scan_clean_run`](Self::scan_clean_run); whatever that refuses is
/// scanned exactly, line by line. Either way a byte is looked at a small,
/// fixed number of times, and never again once consumed.
#[derive(Debug, Clone, Default)]
struct LineScanner {
    /// The previous octet was a CR whose fate (CRLF or bare) depends on the
    /// next octet.
    after_cr: bool,
    /// Octets of the current line so far, including any CR and LF of it.
    line_len: u64,
    bare_cr: bool,
    bare_lf: bool,
    long_line: bool,
    nul: bool,
    eight_bit: bool,
}

impl LineScanner {
    /// Scans `bytes`, which continue the current line. Returns the length
    /// of the prefix that ends with the first `<CRLF>` (the CR may have
    /// been in an earlier call), or `None` when every byte was scanned and
    /// no line ended.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut pos = 0;
        loop {
            if self.after_cr {
                let &next = bytes.get(pos)?;
                self.after_cr = false;
                if next == b'\n' {
                    self.add_len(1);
                    self.line_len = 0;
                    return Some(pos + 1);
                }
                // Not consumed: the octet after a bare CR is scanned as text.
                self.bare_cr = true;
            }
            let rest = &bytes[pos..];
            match memchr2(b'\r', b'\n', rest) {
                None => {
                    self.text(rest);
                    return None;
                }
                Some(i) => {
                    self.text(&rest[..i]);
                    self.add_len(1);
                    if rest[i] == b'\r' {
                        self.after_cr = true;
                    } else {
                        // A bare LF is text, never a line end (RFC 5321 §2.3.8).
                        self.bare_lf = true;
                    }
                    pos += i + 1;
                }
            }
        }
    }

    /// Scans the longest run of whole lines at the front of `bytes` (up to
    /// the last LF) in one pass, when they are all clean text; see
    /// [`check_clean_run`](Self::check_clean_run). No CR may be pending.
    ///
    /// Returns the length of the run, or 0 when there is no such run here
    /// (no line end, a bare CR or LF, a long line): then nothing has been
    /// recorded and [`scan_lines`](Self::scan_lines) takes over.
    fn scan_clean_run(&mut self, bytes: &[u8]) -> usize {
        match memchr::memrchr(b'\n', bytes) {
            Some(last_lf) if self.check_clean_run(&bytes[..=last_lf]) => last_lf + 1,
            _ => 0,
        }
    }

    /// Checks `run`, which continues the current line and ends with LF, in
    /// one pass: true, with the facts recorded, when it is all clean text
    /// (every line ends with `<CRLF>`, holds no other CR or LF, and is
    /// short enough that no line length has to be measured). False, with
    /// nothing recorded, when it is not. No CR may be pending.
    fn check_clean_run(&mut self, run: &[u8]) -> bool {
        debug_assert!(!self.after_cr);
        debug_assert_eq!(run.last(), Some(&b'\n'));
        // The first line may have begun in an earlier call.
        if self.line_len > 0 {
            let first_lf = memchr::memchr(b'\n', run).unwrap_or(run.len() - 1);
            if self.line_len.saturating_add(first_lf as u64 + 1) > TEXT_LINE_MAX as u64 {
                return false;
            }
        }
        match RunCensus::of(run) {
            Some(census) => {
                self.nul |= census.nul;
                self.eight_bit |= census.eight_bit;
                self.line_len = 0;
                true
            }
            None => false,
        }
    }

    /// Scans the whole lines at the front of `bytes` in bulk, for the
    /// common case of clean text: each line ends with `<CRLF>` and holds
    /// no other CR or LF. `bytes` continue the current line, and no CR may
    /// be pending. With `stop_at_dot`, stops after a line end that is
    /// followed by `"."` (DATA has to look at that dot).
    ///
    /// Returns the length of the prefix scanned, which ends with a
    /// `<CRLF>`; 0 when the first line is not complete or not clean, for
    /// [`scan`](Self::scan) to deal with. A span with a bare CR inside a
    /// line is rescanned with `scan`, which keeps the facts exact.
    fn scan_lines(&mut self, bytes: &[u8], stop_at_dot: bool) -> usize {
        debug_assert!(!self.after_cr);
        // Jump from LF to LF: a line is clean so far if the octet before
        // its LF is a CR. Bare CRs inside lines are caught by counting
        // below, which is cheaper than looking for CR and LF separately.
        let mut end = 0;
        let mut lines = 0;
        let mut prior = self.line_len;
        let mut long_line = false;
        while let Some(at) = memchr::memchr(b'\n', &bytes[end..]) {
            let lf = end + at;
            if lf == end || bytes[lf - 1] != b'\r' {
                break;
            }
            long_line |= prior.saturating_add((lf + 1 - end) as u64) > TEXT_LINE_MAX as u64;
            prior = 0;
            end = lf + 1;
            lines += 1;
            if stop_at_dot && bytes.get(end) == Some(&b'.') {
                break;
            }
        }
        if end == 0 {
            return 0;
        }
        let span = &bytes[..end];
        let census = Census::of(span);
        if census.cr != lines {
            // A bare CR somewhere: rare, so redo the span exactly.
            let mut rest = span;
            while let Some(n) = self.scan(rest) {
                rest = &rest[n..];
            }
            debug_assert!(rest.is_empty());
            return end;
        }
        self.long_line |= long_line;
        self.nul |= census.nul;
        self.eight_bit |= census.eight_bit;
        self.line_len = 0;
        end
    }

    /// Notes a CR that is known to be bare and has already been accounted
    /// nowhere else (the CR after a line-leading dot in DATA).
    fn bare_cr_octet(&mut self) {
        self.bare_cr = true;
        self.add_len(1);
    }

    /// Notes a span that holds neither CR nor LF.
    fn text(&mut self, span: &[u8]) {
        if span.is_empty() {
            return;
        }
        self.add_len(span.len());
        if !self.nul && memchr::memchr(0, span).is_some() {
            self.nul = true;
        }
        if !self.eight_bit && !span.is_ascii() {
            self.eight_bit = true;
        }
    }

    fn add_len(&mut self, n: usize) {
        self.line_len = self.line_len.saturating_add(n as u64);
        if self.line_len > TEXT_LINE_MAX as u64 {
            self.long_line = true;
        }
    }

    /// The facts, as a summary with `size` and `too_large` left for the
    /// caller. A CR still waiting for its LF counts as bare.
    fn summary(&self) -> BodySummary {
        BodySummary {
            bare_cr: self.bare_cr || self.after_cr,
            bare_lf: self.bare_lf,
            long_line: self.long_line,
            nul: self.nul,
            eight_bit: self.eight_bit,
            ..BodySummary::default()
        }
    }
}

/// Finds a line that starts with a dot: the only lines DATA has to look
/// at one by one. Built once; searching with it allocates nothing.
static DOT_LINE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\n."));

/// Octets compared at once by [`RunCensus::of`]: three SSE2 registers per
/// accumulator, the most that fit the sixteen without spilling (32 lanes:
/// 4% more instructions, 64: 8% more).
const LANES: usize = 48;

/// All ones for true, zero for false: what a vector comparison yields.
#[inline(always)]
fn mask(flag: bool) -> u8 {
    0u8.wrapping_sub(u8::from(flag))
}

/// The lane-wise accumulators of [`RunCensus::of`]: fixed-size arrays,
/// which the compiler keeps in vector registers.
struct Lanes {
    /// All ones in a lane where a CR and "LF next" differed.
    bad: [u8; LANES],
    /// The largest octet value minus one (wrapping) per lane: NUL and
    /// octets above 127 are those for which it is 127 or more.
    unusual: [u8; LANES],
}

impl Lanes {
    fn new() -> Self {
        Lanes {
            bad: [0; LANES],
            unusual: [0; LANES],
        }
    }

    /// Adds the pairs `(x[k], y[k])`, where `y` is `x` one octet on, and
    /// marks in `lf` the lanes that saw an LF.
    #[inline(always)]
    fn add(&mut self, x: &[u8], y: &[u8], lf: &mut [u8; LANES]) {
        let (x, y) = (&x[..LANES], &y[..LANES]);
        for k in 0..LANES {
            let (is_cr, is_lf) = (mask(x[k] == b'\r'), mask(y[k] == b'\n'));
            self.bad[k] |= is_cr ^ is_lf;
            lf[k] |= is_lf;
            self.unusual[k] = self.unusual[k].max(x[k].wrapping_sub(1));
        }
    }
}

/// What one pass over a run of lines that ends with LF found, when the
/// run is clean text (see [`LineScanner::scan_clean_run`]).
struct RunCensus {
    nul: bool,
    eight_bit: bool,
}

impl RunCensus {
    /// Octets per block. Every block must hold an LF, so no line of a
    /// clean run is longer than two blocks less one octet, which is below
    /// [`TEXT_LINE_MAX`]. A multiple of 32 keeps the vectorised loop free
    /// of scalar tails.
    const BLOCK: usize = 480;

    /// Checks `run` (which ends with LF) for clean lines in one
    /// branch-free pass that the compiler vectorises: every CR followed by
    /// LF, every LF preceded by CR, and an LF in every block. `None` if it
    /// is not clean.
    fn of(run: &[u8]) -> Option<RunCensus> {
        if run.first() == Some(&b'\n') {
            // An LF with no CR before it in this run (none is pending).
            return None;
        }
        // Pairs (run[i], run[i + 1]) see every CR but a final one (the run
        // ends with LF) as a predecessor, and every LF but a first one
        // (checked above) as a successor. In clean text a CR comes exactly
        // where an LF follows, so "CR here" and "LF next" never differ.
        let (before, after) = (&run[..run.len() - 1], &run[1..]);
        // Lane-wise accumulators over fixed-size arrays: the compiler keeps
        // each in vector registers and reduces it once per block (`bad`
        // and `unusual`: once per run). A lane is all ones where a CR and
        // "LF next" differ.
        let mut lanes = Lanes::new();
        for (a, b) in before.chunks(Self::BLOCK).zip(after.chunks(Self::BLOCK)) {
            let mut lf = [0u8; LANES];
            let (mut xs, mut ys) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
            for (x, y) in (&mut xs).zip(&mut ys) {
                lanes.add(x, y, &mut lf);
            }
            // Only a run's last block has a tail (BLOCK is a multiple of
            // LANES): padded with an octet that is none of CR, LF, NUL or
            // 8-bit, it goes through the same vector code.
            let tail = xs.remainder().len();
            if tail > 0 {
                let (mut x, mut y) = ([b'x'; LANES], [b'x'; LANES]);
                x[..tail].copy_from_slice(xs.remainder());
                y[..tail].copy_from_slice(ys.remainder());
                lanes.add(&x, &y, &mut lf);
            }
            if lf.iter().fold(0, |any, &lane| any | lane) == 0 {
                return None;
            }
        }
        let Lanes { bad, unusual } = lanes;
        let bare = bad.iter().fold(0, |any, &lane| any | lane) != 0;
        let unusual = unusual.iter().fold(0, |max, &lane| max.max(lane));
        // The last octet (an LF) is never unusual.
        if bare {
            return None;
        }
        if unusual < 0x7f {
            return Some(RunCensus {
                nul: false,
                eight_bit: false,
            });
        }
        Some(RunCensus {
            nul: memchr::memchr(0, run).is_some(),
            eight_bit: !run.is_ascii(),
        })
    }
}

/// Facts about a span of body bytes, each taken in one fast pass.
#[derive(Debug, Default)]
struct Census {
    /// CR octets.
    cr: usize,
    /// Some octet is NUL.
    nul: bool,
    /// Some octet is above 127.
    eight_bit: bool,
}

impl Census {
    fn of(span: &[u8]) -> Census {
        // memchr counts with the widest vectors the CPU has.
        let cr = memchr::memchr_iter(b'\r', span).count();
        // NUL and octets above 127 are exactly the octets whose value
        // minus one (wrapping) is 127 or more. A branch-free maximum over
        // the span vectorises; the exact facts are looked up only when
        // that says one of them is there.
        let unusual = span.iter().fold(0u8, |max, &b| max.max(b.wrapping_sub(1))) >= 0x7f;
        if !unusual {
            return Census {
                cr,
                ..Census::default()
            };
        }
        Census {
            cr,
            nul: memchr::memchr(0, span).is_some(),
            eight_bit: !span.is_ascii(),
        }
    }
}

/// Stuffing dots [`DataDecoder`] removes in one bulk run; a body with more
/// dot lines takes several runs.
const UNSTUFF_DOTS: usize = 32;

/// Where [`DataDecoder`] stands in the DATA byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataState {
    /// Just after a `<CRLF>` (or at the start of DATA): a `"."` here is
    /// either a stuffing dot or the start of the terminator.
    LineStart,
    /// Inside a line; the [`LineScanner`] knows whether a CR is pending.
    Text,
    /// Read `<CRLF>.`; the dot has been dropped.
    Dot,
    /// Read `<CRLF>.<CR>`; the dot and the CR have been dropped. An LF
    /// ends DATA; anything else makes the CR a bare CR of the body.
    DotCr,
    /// `<CRLF>.<CRLF>` has been read.
    Done,
}

/// Where [`DataDecoder::decode`] stands in its input buffer.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// Octets examined.
    pos: usize,
    /// Octets of body text at the front of the buffer, not yet handed
    /// out; `pos - kept` stuffing dots have been removed in place.
    kept: usize,
}

impl Cursor {
    /// Accepts the `n` examined octets at `pos` as body text, moving them
    /// down over the gap left by removed dots, if there is one.
    fn keep(&mut self, src: &mut [u8], n: usize) {
        if self.kept != self.pos {
            src.copy_within(self.pos..self.pos + n, self.kept);
        }
        self.pos += n;
        self.kept += n;
    }
}

/// One step of [`DataDecoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEvent {
    /// The next unstuffed body octets, never empty, never past `max_size`.
    Chunk(Bytes),
    /// `<CRLF>.<CRLF>` was read; bytes after it are left in the buffer.
    End(BodySummary),
}

/// Server-side DATA body decoder: finds the end of the message, removes
/// dot-stuffing and streams the body in chunks as bytes arrive.
///
/// Use it after sending `354`; it starts at the beginning of a line, so
/// `".\r\n"` as the first bytes is an empty message. It is an explicit
/// byte-state machine: only `<CRLF>.<CRLF>` ends the message (RFC 5321
/// §4.1.1.4), a line that starts with `"."` loses that dot (RFC 5321
/// §4.5.2), and bare CR or LF are body text that is reported in the
/// [`BodySummary`] (see the [module docs](self) on SMTP smuggling).
///
/// The decoder consumes every byte it examines, so no byte is examined
/// again by a later call. It holds no bytes of its own: a terminator split across reads is
/// remembered as a state, and the `<CRLF>` that might start it is already
/// body text, so it is yielded at once. Chunks are split off the input
/// buffer, not copied out of it: a stuffing dot is removed by moving the
/// rest of its line down over it inside the buffer, so a buffer of
/// dot-stuffed lines still comes out as one chunk (a dot at the end of
/// the buffer, or before a CR, ends the chunk, as it may start the
/// terminator).
///
/// The body handed out stops at `max_size` octets; past that the decoder
/// keeps reading to the terminator without yielding, and sets
/// [`BodySummary::too_large`]. Use `u64::MAX` for no limit.
///
/// ```
/// use bytes::BytesMut;
/// use smtp_proto::body::{BodyEvent, DataDecoder};
///
/// let mut decoder = DataDecoder::new(1024);
/// let mut src = BytesMut::from(&b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n"[..]);
/// let mut body = Vec::new();
/// let summary = loop {
///     match decoder.decode(&mut src) {
///         Some(BodyEvent::Chunk(chunk)) => body.extend_from_slice(&chunk),
///         Some(BodyEvent::End(summary)) => break summary,
///         None => unreachable!("the terminator is in the buffer"),
///     }
/// };
/// assert_eq!(body, b"Subject: hi\r\n\r\n.dot\r\n");
/// assert_eq!(summary.size, 21);
/// assert_eq!(&src[..], b"QUIT\r\n"); // the next command
/// ```
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: DataState,
    scanner: LineScanner,
    max_size: u64,
    /// Body octets seen so far (unstuffed).
    size: u64,
    /// Body octets handed out so far; at most `max_size`.
    yielded: u64,
}

impl DataDecoder {
    /// A decoder positioned at the start of the body, which yields at most
    /// `max_size` octets.
    pub fn new(max_size: u64) -> Self {
        Self {
            state: DataState::LineStart,
            scanner: LineScanner::default(),
            max_size,
            size: 0,
            yielded: 0,
        }
    }

    /// Consumes bytes from `src` and returns the next event, or `None` when
    /// it needs more bytes (everything in `src` has then been consumed).
    ///
    /// After [`BodyEvent::End`] the bytes that follow the terminator (a
    /// pipelined command) are still in `src`, and further calls return
    /// `None` without touching `src`.
    pub fn decode(&mut self, src: &mut BytesMut) -> Option<BodyEvent> {
        // `src[..pos]` has been examined. Of that, `src[..kept]` is body
        // text not yet handed out, and `src[kept..pos]` is the gap left by
        // stuffing dots removed in place: text after a removed dot is moved
        // down over the gap as it is scanned (one copy of the line, cheaper
        // than cutting a chunk per dot-stuffed line). Octets whose fate
        // depends on bytes not yet read (the dot and CR of a possible
        // terminator) are dropped at `src[0]`, after the chunk before them
        // has been cut.
        let mut cursor = Cursor { pos: 0, kept: 0 };
        let mut whole_runs = true;
        loop {
            match self.state {
                DataState::Done => return None,
                DataState::Text if !self.scanner.after_cr => {
                    // Clean text in bulk, stuffing dots and all; anything
                    // else line by line.
                    // After one failed run, runs end at the next dot line,
                    // so no octet is checked in bulk more than twice.
                    let dots = if whole_runs { UNSTUFF_DOTS } else { 0 };
                    if self.unstuff_clean_run(src, &mut cursor, dots) {
                        self.state = DataState::LineStart;
                        continue;
                    }
                    if whole_runs {
                        whole_runs = false;
                        if self.unstuff_clean_run(src, &mut cursor, 0) {
                            self.state = DataState::LineStart;
                            continue;
                        }
                    }
                    let rest = &src[cursor.pos..];
                    let n = self.scanner.scan_lines(rest, true);
                    if n > 0 {
                        cursor.keep(src, n);
                        self.state = DataState::LineStart;
                        continue;
                    }
                    match self.scanner.scan(&src[cursor.pos..]) {
                        Some(n) => {
                            cursor.keep(src, n);
                            self.state = DataState::LineStart;
                        }
                        None => {
                            let n = src.len() - cursor.pos;
                            cursor.keep(src, n);
                            return self.take(src, cursor).map(BodyEvent::Chunk);
                        }
                    }
                }
                DataState::Text => match self.scanner.scan(&src[cursor.pos..]) {
                    Some(n) => {
                        cursor.keep(src, n);
                        self.state = DataState::LineStart;
                    }
                    None => {
                        let n = src.len() - cursor.pos;
                        cursor.keep(src, n);
                        return self.take(src, cursor).map(BodyEvent::Chunk);
                    }
                },
                DataState::LineStart => {
                    let Some(&first) = src.get(cursor.pos) else {
                        return self.take(src, cursor).map(BodyEvent::Chunk);
                    };
                    if first != b'.' {
                        self.state = DataState::Text;
                        continue;
                    }
                    match src.get(cursor.pos + 1) {
                        Some(&next) if next != b'\r' => {
                            // A stuffing dot (the terminator needs a CR
                            // next): drop it in place, the line goes on.
                            cursor.pos += 1;
                            self.state = DataState::Text;
                            continue;
                        }
                        _ => {}
                    }
                    let chunk = self.take(src, cursor);
                    src.advance(1);
                    cursor = Cursor { pos: 0, kept: 0 };
                    self.state = DataState::Dot;
                    if let Some(chunk) = chunk {
                        return Some(BodyEvent::Chunk(chunk));
                    }
                }
                DataState::Dot => {
                    debug_assert_eq!(cursor.pos, 0);
                    let &next = src.first()?;
                    if next == b'\r' {
                        src.advance(1);
                        self.state = DataState::DotCr;
                    } else {
                        // The dot was a stuffing dot; the line goes on.
                        self.state = DataState::Text;
                    }
                }
                DataState::DotCr => {
                    debug_assert_eq!(cursor.pos, 0);
                    let &next = src.first()?;
                    if next == b'\n' {
                        src.advance(1);
                        self.state = DataState::Done;
                        return Some(BodyEvent::End(self.summary()));
                    }
                    // "<CRLF>.<CR>x": the dot was stuffing, the CR is a
                    // bare CR of the body, and `x` is scanned as text.
                    self.scanner.bare_cr_octet();
                    self.state = DataState::Text;
                    if let Some(cr) = self.take_dropped_cr() {
                        return Some(BodyEvent::Chunk(cr));
                    }
                }
            }
        }
    }

    /// The fast path of [`decode`](Self::decode), inside a line with no CR
    /// pending: finds the lines ahead that start with a dot (one search),
    /// checks the whole lines up to the first one that may be the
    /// terminator in one pass ([`LineScanner::check_clean_run`]), and if
    /// they are clean text keeps them, removing each stuffing dot in
    /// place. In clean text every `<LF>.` is a line start (no LF is bare)
    /// and a dot followed by anything but CR is a stuffing dot (RFC 5321
    /// §4.5.2). Returns false, having done nothing, when there is no whole
    /// line or the lines are not clean; the caller then scans exactly.
    /// On true the cursor stands at the start of a line. At most
    /// `max_dots` (up to [`UNSTUFF_DOTS`]) stuffing dots are removed; the
    /// run ends before the next dot line.
    fn unstuff_clean_run(&mut self, src: &mut [u8], cursor: &mut Cursor, max_dots: usize) -> bool {
        let rest = &src[cursor.pos..];
        let Some(last_lf) = memchr::memrchr(b'\n', rest) else {
            return false;
        };
        // The run ends before the dot of the first line that may be the
        // terminator (a dot followed by CR, or one whose next octet has
        // not arrived), or after the last whole line.
        let mut end = last_lf + 1;
        let mut dots = [0usize; UNSTUFF_DOTS];
        let mut count = 0;
        let lines = &rest[..=last_lf];
        let mut from = 0;
        while let Some(at) = DOT_LINE.find(&lines[from..]) {
            let dot = from + at + 1;
            if count == max_dots || rest.get(dot + 1).is_none_or(|&next| next == b'\r') {
                end = dot;
                break;
            }
            dots[count] = dot;
            count += 1;
            from = dot;
        }
        if !self.scanner.check_clean_run(&rest[..end]) {
            return false;
        }
        let mut from = 0;
        for &dot in &dots[..count] {
            cursor.keep(src, dot - from);
            cursor.pos += 1;
            from = dot + 1;
        }
        cursor.keep(src, end - from);
        true
    }

    /// Hands out the body text `src[..cursor.kept]` as far as the size
    /// limit allows, and drops the rest of it and the gap after it, so
    /// that `src` starts at the first octet not yet examined.
    fn take(&mut self, src: &mut BytesMut, cursor: Cursor) -> Option<Bytes> {
        let n = cursor.kept;
        let gap = cursor.pos - cursor.kept;
        if n == 0 {
            src.advance(gap);
            return None;
        }
        let n64 = n as u64;
        self.size = self.size.saturating_add(n64);
        let room = self.max_size - self.yielded;
        if n64 <= room {
            self.yielded += n64;
            let chunk = src.split_to(n).freeze();
            src.advance(gap);
            return Some(chunk);
        }
        // `room < n`, so it fits in usize.
        let keep = room as usize;
        let chunk = (keep > 0).then(|| src.split_to(keep).freeze());
        src.advance(n - keep + gap);
        self.yielded += room;
        chunk
    }

    /// Hands out the CR that followed a line-leading dot, once it is known
    /// not to be part of the terminator. It was dropped from the buffer
    /// when it was read, so it comes from a static.
    fn take_dropped_cr(&mut self) -> Option<Bytes> {
        self.size = self.size.saturating_add(1);
        if self.yielded < self.max_size {
            self.yielded += 1;
            Some(Bytes::from_static(b"\r"))
        } else {
            None
        }
    }

    fn summary(&self) -> BodySummary {
        BodySummary {
            size: self.size,
            too_large: self.size > self.max_size,
            ..self.scanner.summary()
        }
    }
}

/// Scans a body that arrives in pieces (BDAT chunks, RFC 3030) for the
/// facts [`DataDecoder`] reports: size, bare CR and LF, long lines, NUL and
/// 8-bit octets. Nothing is unstuffed and nothing ends the body: the caller
/// says when it is complete.
///
/// ```
/// use smtp_proto::body::BodyCheck;
///
/// let mut check = BodyCheck::new(1024);
/// check.update(b"Subject: hi\r");
/// check.update(b"\n\r\nbody\n");
/// let summary = check.finish();
/// assert_eq!(summary.size, 20);
/// assert!(summary.bare_lf && !summary.bare_cr);
/// ```
#[derive(Debug, Clone)]
pub struct BodyCheck {
    scanner: LineScanner,
    max_size: u64,
    size: u64,
}

impl BodyCheck {
    /// A check for one message; [`BodySummary::too_large`] is set when
    /// more than `max_size` octets are seen.
    pub fn new(max_size: u64) -> Self {
        Self {
            scanner: LineScanner::default(),
            max_size,
            size: 0,
        }
    }

    /// Scans the next piece of the body. Pieces may split a `<CRLF>` or a
    /// line anywhere.
    pub fn update(&mut self, chunk: &[u8]) {
        self.size = self.size.saturating_add(chunk.len() as u64);
        let mut rest = chunk;
        loop {
            if !self.scanner.after_cr {
                let mut n = self.scanner.scan_clean_run(rest);
                if n == 0 {
                    n = self.scanner.scan_lines(rest, false);
                }
                rest = &rest[n..];
            }
            match self.scanner.scan(rest) {
                Some(n) => rest = &rest[n..],
                None => break,
            }
        }
    }

    /// Returns the summary of everything scanned and resets the check for
    /// the next message (with the same `max_size`). A CR at the very end
    /// counts as bare; a last line without `<CRLF>` counts its octets only.
    pub fn finish(&mut self) -> BodySummary {
        let summary = BodySummary {
            size: self.size,
            too_large: self.size > self.max_size,
            ..self.scanner.summary()
        };
        *self = Self::new(self.max_size);
        summary
    }
}

/// One step of [`BdatDecoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdatEvent {
    /// The next octets of the chunk, never empty.
    Chunk(Bytes),
    /// All announced octets have been read; what follows is left in the
    /// buffer.
    End,
}

/// Server-side reader for the octets announced by `BDAT <size>` (RFC 3030
/// §2): yields exactly `size` octets, whatever they are, then
/// [`BdatEvent::End`] once.
///
/// ```
/// use bytes::BytesMut;
/// use smtp_proto::body::{BdatDecoder, BdatEvent};
///
/// let mut decoder = BdatDecoder::new(5);
/// let mut src = BytesMut::from(&b"hello\r\nQUIT\r\n"[..]);
/// assert_eq!(decoder.decode(&mut src), Some(BdatEvent::Chunk("hello".into())));
/// assert_eq!(decoder.decode(&mut src), Some(BdatEvent::End));
/// assert_eq!(&src[..], b"\r\nQUIT\r\n");
/// ```
#[derive(Debug, Clone)]
pub struct BdatDecoder {
    remaining: u64,
    ended: bool,
}

impl BdatDecoder {
    /// A reader for a chunk of `size` octets (`BDAT 0 LAST` gives 0).
    pub fn new(size: u64) -> Self {
        Self {
            remaining: size,
            ended: false,
        }
    }

    /// Consumes up to [`remaining`](Self::remaining) octets from `src`.
    /// Returns `None` when it needs more bytes, and after `End` has been
    /// returned.
    pub fn decode(&mut self, src: &mut BytesMut) -> Option<BdatEvent> {
        if self.ended {
            return None;
        }
        if self.remaining == 0 {
            self.ended = true;
            return Some(BdatEvent::End);
        }
        if src.is_empty() {
            return None;
        }
        let n = usize::try_from(self.remaining).map_or(src.len(), |r| r.min(src.len()));
        self.remaining -= n as u64;
        Some(BdatEvent::Chunk(src.split_to(n).freeze()))
    }

    /// Octets of the chunk not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

/// Client-side body encoder: turns arbitrary bytes into `<CRLF>` lines
/// and, for DATA, dot-stuffs them (RFC 5321 §4.5.2).
///
/// Line endings are normalised because a bare CR or LF is not allowed in
/// SMTP (RFC 5321 §2.3.8) and is refused by careful servers: a bare LF or a
/// bare CR becomes `<CRLF>`, and `<CRLF>` stays one `<CRLF>` even when the
/// CR ends one call's bytes and the LF starts the next. The encoder holds
/// no bytes between calls, only two flags.
///
/// [`finish`](Self::finish) ends the last line with `<CRLF>` if needed
/// and, for DATA, writes the `".<CRLF>"` that together with it forms the
/// `<CRLF>.<CRLF>` terminator. An empty body is sent as `".<CRLF>"` alone,
/// which [`DataDecoder`] reads back as an empty body; so for every input,
/// decoding the output gives the normalised input, plus a final `<CRLF>`
/// when the input was not empty and did not end with a line ending.
///
/// ```
/// use bytes::BytesMut;
/// use smtp_proto::body::DataEncoder;
///
/// let mut encoder = DataEncoder::new();
/// let mut out = BytesMut::new();
/// encoder.encode(b"line one\n.hidden\r", &mut out);
/// encoder.encode(b"\nlast", &mut out);
/// encoder.finish(&mut out);
/// assert_eq!(&out[..], b"line one\r\n..hidden\r\nlast\r\n.\r\n");
/// ```
#[derive(Debug, Clone)]
pub struct DataEncoder {
    dot_stuffing: bool,
    /// Nothing has been written since the last `<CRLF>` (or since the
    /// start): a dot here must be doubled and `finish` needs no `<CRLF>`.
    line_start: bool,
    /// The last input octet was a CR, already written as `<CRLF>`; an LF
    /// right after it belongs to that line ending.
    after_cr: bool,
}

impl DataEncoder {
    /// An encoder for DATA: normalises line endings and dot-stuffs.
    pub fn new() -> Self {
        Self {
            dot_stuffing: true,
            line_start: true,
            after_cr: false,
        }
    }

    /// An encoder for BDAT: normalises line endings only.
    pub fn without_dot_stuffing() -> Self {
        Self {
            dot_stuffing: false,
            ..Self::new()
        }
    }

    /// Appends the encoded form of the next body bytes to `dst`.
    pub fn encode(&mut self, chunk: &[u8], dst: &mut BytesMut) {
        // Dots and bare line endings add a little; reserve for the common case.
        dst.reserve(chunk.len() + 2);
        let mut rest = chunk;
        while let Some(&first) = rest.first() {
            if self.after_cr {
                self.after_cr = false;
                if first == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            if self.line_start && self.dot_stuffing && first == b'.' {
                dst.put_u8(b'.');
            }
            match memchr2(b'\r', b'\n', rest) {
                None => {
                    dst.extend_from_slice(rest);
                    self.line_start = false;
                    return;
                }
                Some(i) => {
                    dst.extend_from_slice(&rest[..i]);
                    dst.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    self.after_cr = rest[i] == b'\r';
                    rest = &rest[i + 1..];
                }
            }
        }
    }

    /// Ends the body: appends `<CRLF>` unless the body is empty or already
    /// ends with a line ending, then, for DATA, `".<CRLF>"`. The encoder
    /// is then ready for the next message.
    pub fn finish(&mut self, dst: &mut BytesMut) {
        if !self.line_start {
            dst.extend_from_slice(b"\r\n");
        }
        if self.dot_stuffing {
            dst.extend_from_slice(b".\r\n");
        }
        self.line_start = true;
        self.after_cr = false;
    }
}

impl Default for DataEncoder {
    /// The same as [`DataEncoder::new`].
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What feeding a DATA stream to a decoder produced.
    #[derive(Debug, PartialEq, Eq)]
    struct Decoded {
        body: Vec<u8>,
        summary: Option<BodySummary>,
        /// Bytes left for the command reader: what stayed in the buffer
        /// after `End`, followed by the pieces not fed yet.
        rest: Vec<u8>,
    }

    /// Feeds `pieces` one after the other, draining events after each.
    fn feed(max_size: u64, pieces: &[&[u8]]) -> Decoded {
        let mut decoder = DataDecoder::new(max_size);
        let mut src = BytesMut::new();
        let mut body = Vec::new();
        let mut summary = None;
        let mut rest = Vec::new();
        for piece in pieces {
            if summary.is_some() {
                rest.extend_from_slice(piece);
                continue;
            }
            src.extend_from_slice(piece);
            // Each event consumes at least one byte, so this is bounded.
            for _ in 0..=src.len() + 2 {
                match decoder.decode(&mut src) {
                    Some(BodyEvent::Chunk(chunk)) => {
                        assert!(!chunk.is_empty(), "empty chunk");
                        body.extend_from_slice(&chunk);
                        assert!(body.len() as u64 <= max_size, "yielded past max_size");
                    }
                    Some(BodyEvent::End(s)) => {
                        summary = Some(s);
                        break;
                    }
                    None => {
                        assert!(src.is_empty(), "None with unconsumed bytes");
                        break;
                    }
                }
            }
        }
        if summary.is_some() {
            let before = src.clone();
            assert_eq!(decoder.decode(&mut src), None, "event after End");
            assert_eq!(src, before, "decode after End touched the buffer");
        }
        let mut left = src.to_vec();
        left.extend_from_slice(&rest);
        Decoded {
            body,
            summary,
            rest: left,
        }
    }

    /// A deliberately naive DATA reader over a whole buffer, written
    /// independently of the state machine: returns the unstuffed body as
    /// far as it is decided, and where the terminator ends if there is one.
    fn reference_data(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut body = Vec::new();
        let mut line_start = true;
        let mut i = 0;
        while i < input.len() {
            if line_start && input[i..].starts_with(b".\r\n") {
                return (body, Some(i + 3));
            }
            if line_start && &input[i..] == b".\r" {
                // Undecided: the next byte may complete the terminator, so
                // the CR is not body text yet.
                return (body, None);
            }
            if line_start && input[i] == b'.' {
                line_start = false;
                i += 1;
                continue;
            }
            line_start = input[i] == b'\n' && body.last() == Some(&b'\r');
            body.push(input[i]);
            i += 1;
        }
        (body, None)
    }

    /// The facts about a complete body, computed the slow way.
    fn reference_facts(body: &[u8], max_size: u64) -> BodySummary {
        let mut summary = BodySummary {
            size: body.len() as u64,
            too_large: body.len() as u64 > max_size,
            nul: body.contains(&0),
            eight_bit: body.iter().any(|&b| b >= 0x80),
            ..BodySummary::default()
        };
        let mut line_len = 0;
        for (i, &b) in body.iter().enumerate() {
            line_len += 1;
            if b == b'\r' && body.get(i + 1) != Some(&b'\n') {
                summary.bare_cr = true;
            }
            if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
                summary.bare_lf = true;
            }
            if line_len > TEXT_LINE_MAX {
                summary.long_line = true;
            }
            if b == b'\n' && i > 0 && body[i - 1] == b'\r' {
                line_len = 0;
            }
        }
        summary
    }

    /// Checks that every way of splitting `input` into two pieces, three
    /// pieces (for short inputs) and single bytes gives what one buffer
    /// gives.
    fn assert_split_invariant(max_size: u64, input: &[u8]) -> Decoded {
        let whole = feed(max_size, &[input]);
        for i in 0..=input.len() {
            let split = feed(max_size, &[&input[..i], &input[i..]]);
            assert_eq!(split, whole, "split at {i} of {input:?}");
        }
        if input.len() <= 48 {
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    let split = feed(max_size, &[&input[..i], &input[i..j], &input[j..]]);
                    assert_eq!(split, whole, "split at {i},{j} of {input:?}");
                }
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(feed(max_size, &bytes), whole, "byte by byte: {input:?}");
        whole
    }

    fn summary(size: u64) -> BodySummary {
        BodySummary {
            size,
            ..BodySummary::default()
        }
    }

    #[test]
    fn empty_message_right_after_354() {
        let d = assert_split_invariant(u64::MAX, b".\r\nQUIT\r\n");
        assert_eq!(d.body, b"");
        assert_eq!(d.summary, Some(summary(0)));
        assert_eq!(d.rest, b"QUIT\r\n");
    }

    #[test]
    fn one_empty_line() {
        let d = assert_split_invariant(u64::MAX, b"\r\n.\r\n");
        assert_eq!(d.body, b"\r\n");
        assert_eq!(d.summary, Some(summary(2)));
    }

    #[test]
    fn body_includes_crlf_before_final_dot() {
        let d = assert_split_invariant(u64::MAX, b"Subject: x\r\n\r\nHello\r\n.\r\n");
        assert_eq!(d.body, b"Subject: x\r\n\r\nHello\r\n");
        assert_eq!(d.summary, Some(summary(21)));
        assert!(d.rest.is_empty());
    }

    #[test]
    fn dot_unstuffing() {
        let d = assert_split_invariant(u64::MAX, b"..\r\n...\r\n.a\r\nb.\r\n. \r\n..\r\n.\r\n");
        assert_eq!(d.body, b".\r\n..\r\na\r\nb.\r\n \r\n.\r\n");
        assert_eq!(d.summary, Some(summary(d.body.len() as u64)));
    }

    #[test]
    fn leading_dot_of_first_line_is_unstuffed() {
        let d = assert_split_invariant(u64::MAX, b"..x\r\n.\r\n");
        assert_eq!(d.body, b".x\r\n");
    }

    #[test]
    fn dot_after_bare_line_ending_is_text() {
        let d = assert_split_invariant(u64::MAX, b"a\n..\r\n.\r\n");
        assert_eq!(d.body, b"a\n..\r\n");
        let d = assert_split_invariant(u64::MAX, b"a\r..\r\n.\r\n");
        assert_eq!(d.body, b"a\r..\r\n");
    }

    /// A line ending that must not end DATA, placed between two lines of
    /// text, with the unstuffed body and the bare endings it must report.
    struct Smuggle {
        sequence: &'static [u8],
        body: &'static [u8],
        bare_cr: bool,
        bare_lf: bool,
        nul: bool,
    }

    const SMUGGLING: &[Smuggle] = &[
        Smuggle {
            sequence: b"\n.\n",
            body: b"\n.\n",
            bare_cr: false,
            bare_lf: true,
            nul: false,
        },
        Smuggle {
            sequence: b"\n.\r\n",
            body: b"\n.\r\n",
            bare_cr: false,
            bare_lf: true,
            nul: false,
        },
        Smuggle {
            sequence: b"\r\n.\n",
            body: b"\r\n\n",
            bare_cr: false,
            bare_lf: true,
            nul: false,
        },
        Smuggle {
            sequence: b"\r\n.\r",
            body: b"\r\n\r",
            bare_cr: true,
            bare_lf: false,
            nul: false,
        },
        Smuggle {
            sequence: b"\r.\r",
            body: b"\r.\r",
            bare_cr: true,
            bare_lf: false,
            nul: false,
        },
        Smuggle {
            sequence: b"\r.\n",
            body: b"\r.\n",
            bare_cr: true,
            bare_lf: true,
            nul: false,
        },
        Smuggle {
            sequence: b"\n.\r",
            body: b"\n.\r",
            bare_cr: true,
            bare_lf: true,
            nul: false,
        },
        Smuggle {
            sequence: b"\r\n\x00.\r\n",
            body: b"\r\n\x00.\r\n",
            bare_cr: false,
            bare_lf: false,
            nul: true,
        },
        Smuggle {
            sequence: b"\r\n.\x00\r\n",
            body: b"\r\n\x00\r\n",
            bare_cr: false,
            bare_lf: false,
            nul: true,
        },
    ];

    #[test]
    fn smuggling_sequences_do_not_end_data() {
        let smuggled = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n";
        for case in SMUGGLING {
            let mut input = b"text".to_vec();
            input.extend_from_slice(case.sequence);
            input.extend_from_slice(smuggled);
            input.extend_from_slice(b"forged\r\n.\r\nQUIT\r\n");

            let mut expected = b"text".to_vec();
            expected.extend_from_slice(case.body);
            expected.extend_from_slice(smuggled);
            expected.extend_from_slice(b"forged\r\n");

            let d = assert_split_invariant(u64::MAX, &input);
            assert_eq!(d.body, expected, "sequence {:?}", case.sequence);
            assert_eq!(d.rest, b"QUIT\r\n", "sequence {:?}", case.sequence);
            let s = d.summary.expect("the real terminator ends DATA");
            assert_eq!(s.size, expected.len() as u64);
            assert_eq!(
                (s.bare_cr, s.bare_lf, s.nul),
                (case.bare_cr, case.bare_lf, case.nul),
                "sequence {:?}",
                case.sequence
            );
            assert_eq!(
                s.has_bare_line_ending(),
                case.bare_cr || case.bare_lf,
                "sequence {:?}",
                case.sequence
            );
        }
    }

    #[test]
    fn smuggling_sequences_at_the_start_do_not_end_data() {
        for case in SMUGGLING {
            // Right after 354 the decoder is at a line start, as after a CRLF.
            let mut input = case.sequence.to_vec();
            input.extend_from_slice(b"x\r\n.\r\n");
            let (expected, end) = reference_data(&input);
            assert_eq!(end, Some(input.len()));
            let d = assert_split_invariant(u64::MAX, &input);
            assert_eq!(d.body, expected, "sequence {:?}", case.sequence);
            assert!(d.rest.is_empty());
        }
    }

    #[test]
    fn smuggling_sequences_at_the_end_of_input_wait_for_more() {
        for case in SMUGGLING {
            let mut input = b"text".to_vec();
            input.extend_from_slice(case.sequence);
            let d = assert_split_invariant(u64::MAX, &input);
            assert_eq!(d.summary, None, "sequence {:?}", case.sequence);
        }
    }

    #[test]
    fn bare_cr_before_real_terminator_ends_data_and_is_reported() {
        let d = assert_split_invariant(u64::MAX, b"text\r\r\n.\r\nNOOP\r\n");
        assert_eq!(d.body, b"text\r\r\n");
        assert_eq!(d.rest, b"NOOP\r\n");
        let s = d.summary.unwrap();
        assert!(s.bare_cr && !s.bare_lf);
        assert_eq!(s.size, 7);
    }

    #[test]
    fn dot_cr_followed_by_cr_then_terminator() {
        // "<CRLF>.<CR>" is not the end; the CR is body text and the CR after
        // it starts the CRLF that precedes the real terminator.
        let d = assert_split_invariant(u64::MAX, b"a\r\n.\r\r\n.\r\n");
        assert_eq!(d.body, b"a\r\n\r\r\n");
        assert!(d.summary.unwrap().bare_cr);
        assert!(d.rest.is_empty());
    }

    #[test]
    fn partial_terminator_is_held_as_state_not_bytes() {
        let mut decoder = DataDecoder::new(u64::MAX);
        let mut src = BytesMut::from(&b"a\r\n.\r"[..]);
        // The CRLF is body text whatever follows; the dot and the CR wait.
        assert_eq!(
            decoder.decode(&mut src),
            Some(BodyEvent::Chunk("a\r\n".into()))
        );
        assert_eq!(decoder.decode(&mut src), None);
        assert!(src.is_empty(), "nothing is left in the buffer");
        src.extend_from_slice(b"x\r\n.\r\n");
        assert_eq!(
            decoder.decode(&mut src),
            Some(BodyEvent::Chunk("\r".into()))
        );
        assert_eq!(
            decoder.decode(&mut src),
            Some(BodyEvent::Chunk("x\r\n".into()))
        );
        let Some(BodyEvent::End(summary)) = decoder.decode(&mut src) else {
            panic!("expected the end of DATA");
        };
        assert_eq!(summary.size, 7);
        assert!(summary.bare_cr);
    }

    #[test]
    fn no_end_without_terminator() {
        let d = assert_split_invariant(u64::MAX, b"a\r\nb\r\n.");
        assert_eq!(d.body, b"a\r\nb\r\n");
        assert_eq!(d.summary, None);
    }

    #[test]
    fn eight_bit_and_nul_are_reported() {
        let d = assert_split_invariant(u64::MAX, "caf\u{e9}\r\n.\r\n".as_bytes());
        let s = d.summary.unwrap();
        assert!(s.eight_bit && !s.nul);
        let d = assert_split_invariant(u64::MAX, b"a\x00b\r\n.\r\n");
        let s = d.summary.unwrap();
        assert!(s.nul && !s.eight_bit);
        assert_eq!(d.body, b"a\x00b\r\n");
    }

    fn line(content_len: usize) -> Vec<u8> {
        let mut l = vec![b'x'; content_len];
        l.extend_from_slice(b"\r\n");
        l
    }

    #[test]
    fn long_line_boundary() {
        // 998 octets + CRLF = 1000: allowed (RFC 5321 §4.5.3.1.6).
        let mut input = line(998);
        input.extend_from_slice(b".\r\n");
        let d = assert_split_invariant(u64::MAX, &input);
        assert!(!d.summary.unwrap().long_line);

        // 999 octets + CRLF = 1001: too long.
        let mut input = line(999);
        input.extend_from_slice(b".\r\n");
        let d = assert_split_invariant(u64::MAX, &input);
        assert!(d.summary.unwrap().long_line);
    }

    #[test]
    fn long_line_counts_per_line_not_per_body() {
        let mut input = Vec::new();
        for _ in 0..5 {
            input.extend_from_slice(&line(998));
        }
        input.extend_from_slice(b".\r\n");
        let d = assert_split_invariant(u64::MAX, &input);
        assert!(!d.summary.unwrap().long_line);
    }

    #[test]
    fn long_line_ignores_the_stuffing_dot() {
        // "." + 998 octets: the line is 998 + CRLF once unstuffed.
        let mut input = b".".to_vec();
        input.extend_from_slice(&line(998));
        input.extend_from_slice(b".\r\n");
        let d = assert_split_invariant(u64::MAX, &input);
        assert!(!d.summary.unwrap().long_line);

        // ".." + 998: the kept dot makes it 999 + CRLF.
        let mut input = b"..".to_vec();
        input.extend_from_slice(&line(998));
        input.extend_from_slice(b".\r\n");
        let d = assert_split_invariant(u64::MAX, &input);
        assert!(d.summary.unwrap().long_line);
    }

    #[test]
    fn bare_line_endings_do_not_end_a_line() {
        // 500 + LF + 498 + CRLF: one line of 1001 octets.
        let mut input = vec![b'x'; 500];
        input.push(b'\n');
        input.extend_from_slice(&line(498));
        input.extend_from_slice(b".\r\n");
        let d = assert_split_invariant(u64::MAX, &input);
        let s = d.summary.unwrap();
        assert!(s.long_line && s.bare_lf);

        // The same with a bare CR, one octet shorter: exactly 1000.
        let mut input = vec![b'x'; 500];
        input.push(b'\r');
        input.extend_from_slice(&line(497));
        input.extend_from_slice(b".\r\n");
        let d = assert_split_invariant(u64::MAX, &input);
        let s = d.summary.unwrap();
        assert!(!s.long_line && s.bare_cr);
    }

    #[test]
    fn size_limit_exact_boundary() {
        let input = b"abc\r\n..d\r\n.\r\nQUIT\r\n";
        // Unstuffed body "abc\r\n.d\r\n" is 9 octets.
        let d = assert_split_invariant(9, input);
        assert_eq!(d.body, b"abc\r\n.d\r\n");
        assert_eq!(d.summary.unwrap().size, 9);
        assert!(!d.summary.unwrap().too_large);
        assert_eq!(d.rest, b"QUIT\r\n");
    }

    #[test]
    fn size_limit_exceeded_consumes_to_the_end() {
        let input = b"abc\r\n..d\r\n.\r\nMAIL FROM:<a@b.c>\r\n";
        for max in 0..9 {
            let d = assert_split_invariant(max, input);
            assert_eq!(d.body, &b"abc\r\n.d\r\n"[..max as usize], "max {max}");
            let s = d.summary.unwrap();
            assert!(s.too_large, "max {max}");
            assert_eq!(s.size, 9, "max {max}");
            assert_eq!(d.rest, b"MAIL FROM:<a@b.c>\r\n", "max {max}");
        }
    }

    #[test]
    fn size_limit_counts_the_cr_after_a_dot() {
        // The body is "\r\n\rx\r\n"; the limit falls on the CR that was
        // held back after the dot.
        let input = b"\r\n.\rx\r\n.\r\n";
        for max in 0..=6 {
            let d = assert_split_invariant(max, input);
            assert_eq!(d.body, &b"\r\n\rx\r\n"[..(max as usize).min(6)]);
            let s = d.summary.unwrap();
            assert_eq!(s.size, 6);
            assert_eq!(s.too_large, max < 6);
        }
    }

    #[test]
    fn large_body_is_streamed_without_copying_per_line() {
        let mut input = Vec::new();
        for i in 0..2000 {
            input.extend_from_slice(format!("line {i}\r\n").as_bytes());
        }
        let body_len = input.len();
        input.extend_from_slice(b".\r\n");
        let mut decoder = DataDecoder::new(u64::MAX);
        let mut src = BytesMut::from(&input[..]);
        let first = decoder.decode(&mut src);
        // No line starts with a dot, so the whole body is a single chunk.
        assert!(matches!(first, Some(BodyEvent::Chunk(ref c)) if c.len() == body_len));
        assert!(matches!(decoder.decode(&mut src), Some(BodyEvent::End(_))));
    }

    #[test]
    fn stuffed_lines_are_unstuffed_in_place_into_one_chunk() {
        let mut input = Vec::new();
        let mut body = Vec::new();
        for i in 0..200 {
            input.extend_from_slice(format!("..dot {i}\r\nline {i}\r\n").as_bytes());
            body.extend_from_slice(format!(".dot {i}\r\nline {i}\r\n").as_bytes());
        }
        input.extend_from_slice(b".\r\nQUIT\r\n");
        let mut decoder = DataDecoder::new(u64::MAX);
        let mut src = BytesMut::from(&input[..]);
        // Every stuffing dot is followed by more text in the buffer, so
        // none of them cuts the body into pieces.
        let first = decoder.decode(&mut src);
        assert!(matches!(first, Some(BodyEvent::Chunk(ref c)) if c[..] == body[..]));
        assert!(
            matches!(decoder.decode(&mut src), Some(BodyEvent::End(s)) if s.size == body.len() as u64)
        );
        assert_eq!(&src[..], b"QUIT\r\n");
    }

    #[test]
    fn octets_after_the_terminator_are_not_facts_of_the_body() {
        // The bulk run stops at the terminator: the 8-bit octet, NUL, bare
        // LF and long line of what follows are not part of this body.
        let mut input = Vec::new();
        for i in 0..40 {
            input.extend_from_slice(format!("..dot {i}\r\nline {i}\r\n").as_bytes());
        }
        input.extend_from_slice(b".\r\nMAIL FROM:<\xc3\xa9\x00@example.org>\n");
        input.extend_from_slice(&[b'x'; 1200]);
        input.extend_from_slice(b"\r\n");
        let decoded = assert_split_invariant(u64::MAX, &input);
        let (body, end) = reference_data(&input);
        assert_eq!(decoded.body, body);
        assert_eq!(decoded.summary, Some(summary(body.len() as u64)));
        assert_eq!(decoded.rest, &input[end.unwrap()..]);
    }

    #[test]
    fn dot_lines_before_and_after_a_bare_line_ending() {
        // A run that is not clean is scanned line by line; the stuffing
        // dots before and after the bare LF are removed all the same, and a
        // dot after the bare LF is text.
        let mut input = Vec::new();
        for i in 0..40 {
            input.extend_from_slice(format!("..dot {i}\r\nline {i}\r\n").as_bytes());
            if i == 20 {
                input.extend_from_slice(b"bare\n.not stuffed\r\n");
            }
        }
        input.extend_from_slice(b".\r\n");
        let decoded = assert_split_invariant(u64::MAX, &input);
        let (body, _) = reference_data(&input);
        assert_eq!(decoded.body, body);
        assert_eq!(decoded.summary, Some(reference_facts(&body, u64::MAX)));
        assert!(decoded.summary.unwrap().bare_lf);
    }

    #[test]
    fn body_check_matches_data_decoder() {
        let input = b"a\rb\nc\x00\xff\r\n";
        let mut check = BodyCheck::new(5);
        for b in input {
            check.update(&[*b]);
        }
        let s = check.finish();
        assert_eq!(s, reference_facts(input, 5));
        assert!(s.bare_cr && s.bare_lf && s.nul && s.eight_bit && s.too_large);
        assert_eq!(s.size, 9);
        let mut data = input.to_vec();
        data.extend_from_slice(b".\r\n");
        assert_eq!(feed(5, &[&data]).summary, Some(s));
        // finish() resets for the next message.
        assert_eq!(check.finish(), BodySummary::default());
    }

    #[test]
    fn body_check_trailing_cr_is_bare() {
        let mut check = BodyCheck::new(u64::MAX);
        check.update(b"abc\r");
        assert!(check.finish().bare_cr);
        check.update(b"abc\r");
        check.update(b"\n");
        assert!(!check.finish().bare_cr);
    }

    #[test]
    fn body_check_long_lines_across_chunks() {
        for (content, long) in [(998, false), (999, true)] {
            let input = line(content);
            for split in 0..=input.len() {
                let mut check = BodyCheck::new(u64::MAX);
                check.update(&input[..split]);
                check.update(&input[split..]);
                assert_eq!(check.finish().long_line, long, "{content} split {split}");
            }
        }
        // A final line without CRLF counts its own octets.
        let mut check = BodyCheck::new(u64::MAX);
        check.update(&[b'x'; 1000]);
        assert!(!check.finish().long_line);
        check.update(&[b'x'; 1001]);
        assert!(check.finish().long_line);
    }

    #[test]
    fn bdat_yields_exactly_size_octets() {
        let mut decoder = BdatDecoder::new(7);
        let mut src = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            decoder.decode(&mut src),
            Some(BdatEvent::Chunk("abc".into()))
        );
        assert_eq!(decoder.remaining(), 4);
        assert_eq!(decoder.decode(&mut src), None);
        src.extend_from_slice(b"d\r\n.\r\nBDAT 0 LAST\r\n");
        assert_eq!(
            decoder.decode(&mut src),
            Some(BdatEvent::Chunk("d\r\n.".into()))
        );
        assert_eq!(decoder.remaining(), 0);
        assert_eq!(decoder.decode(&mut src), Some(BdatEvent::End));
        assert_eq!(decoder.decode(&mut src), None);
        assert_eq!(&src[..], b"\r\nBDAT 0 LAST\r\n");
    }

    #[test]
    fn bdat_zero_size_ends_at_once() {
        let mut decoder = BdatDecoder::new(0);
        let mut src = BytesMut::from(&b"QUIT\r\n"[..]);
        assert_eq!(decoder.decode(&mut src), Some(BdatEvent::End));
        assert_eq!(decoder.decode(&mut src), None);
        assert_eq!(&src[..], b"QUIT\r\n");
    }

    #[test]
    fn bdat_huge_size_takes_what_is_there() {
        let mut decoder = BdatDecoder::new(u64::MAX);
        let mut src = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            decoder.decode(&mut src),
            Some(BdatEvent::Chunk("abc".into()))
        );
        assert_eq!(decoder.remaining(), u64::MAX - 3);
        assert!(src.is_empty());
    }

    fn encode_pieces(dot_stuffing: bool, pieces: &[&[u8]]) -> Vec<u8> {
        let mut encoder = if dot_stuffing {
            DataEncoder::new()
        } else {
            DataEncoder::without_dot_stuffing()
        };
        let mut out = BytesMut::new();
        for piece in pieces {
            encoder.encode(piece, &mut out);
        }
        encoder.finish(&mut out);
        out.to_vec()
    }

    /// CRLF normalisation the slow way: every CRLF, bare CR and bare LF
    /// becomes one CRLF; a non-empty result gets a final CRLF if missing.
    fn normalise(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' if input.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 2;
                    continue;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn encoder_examples() {
        assert_eq!(encode_pieces(true, &[]), b".\r\n");
        assert_eq!(encode_pieces(true, &[b""]), b".\r\n");
        assert_eq!(encode_pieces(true, &[b"."]), b"..\r\n.\r\n");
        assert_eq!(encode_pieces(true, &[b"a\n.\n"]), b"a\r\n..\r\n.\r\n");
        assert_eq!(
            encode_pieces(true, &[b"a\r", b"\n", b".b"]),
            b"a\r\n..b\r\n.\r\n"
        );
        assert_eq!(encode_pieces(true, &[b"a\r", b"\r\n"]), b"a\r\n\r\n.\r\n");
        assert_eq!(encode_pieces(true, &[b"a\r"]), b"a\r\n.\r\n");
        assert_eq!(encode_pieces(true, &[b"\n"]), b"\r\n.\r\n");
        assert_eq!(encode_pieces(true, &[b"x.", b".\r\n"]), b"x..\r\n.\r\n");
        assert_eq!(encode_pieces(false, &[b".a\rb"]), b".a\r\nb\r\n");
        assert_eq!(encode_pieces(false, &[]), b"");
    }

    #[test]
    fn encoder_is_reusable_after_finish() {
        let mut encoder = DataEncoder::new();
        let mut out = BytesMut::new();
        encoder.encode(b"one\r", &mut out);
        encoder.finish(&mut out);
        encoder.encode(b"\n.two", &mut out);
        encoder.finish(&mut out);
        assert_eq!(&out[..], b"one\r\n.\r\n\r\n..two\r\n.\r\n");
    }

    #[test]
    fn encoder_defuses_smuggling_sequences() {
        for case in SMUGGLING {
            let mut input = b"text".to_vec();
            input.extend_from_slice(case.sequence);
            input.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\n");
            let wire = encode_pieces(true, &[&input]);
            let d = assert_split_invariant(u64::MAX, &wire);
            let s = d.summary.expect("encoded body ends");
            assert!(d.rest.is_empty(), "terminator only at the end");
            assert!(!s.has_bare_line_ending());
            assert_eq!(d.body, normalise(&input));
        }
    }

    /// Splits `data` at the given cut points (taken modulo its length).
    fn split_at_points<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for p in points {
            pieces.push(&data[start..p]);
            start = p;
        }
        pieces.push(&data[start..]);
        pieces
    }

    /// Bytes that stress the state machines: line endings and dots often.
    fn tricky_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                4 => Just(b'\r'),
                4 => Just(b'\n'),
                4 => Just(b'.'),
                4 => Just(b'a'),
                1 => Just(0u8),
                1 => Just(0xe9u8),
                1 => any::<u8>(),
            ],
            0..max_len,
        )
    }

    /// Mostly clean CRLF lines, some long enough to reach the block and
    /// line-length limits of the bulk scan, some starting with a dot, and
    /// now and then a bare CR or LF, a NUL or an 8-bit octet inside.
    fn line_structured(max_lines: usize) -> impl Strategy<Value = Vec<u8>> {
        let line = (
            prop_oneof![
                6 => 0usize..100,
                2 => 470usize..490,
                2 => 950usize..970,
                2 => 990usize..1010,
            ],
            prop_oneof![8 => Just(None), 1 => Just(Some(b'.')), 1 => Just(Some(b'\r')),
                1 => Just(Some(b'\n')), 1 => Just(Some(0u8)), 1 => Just(Some(0xc3u8))],
            any::<prop::sample::Index>(),
            prop_oneof![12 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..]), 1 => Just(&b"\r"[..])],
        )
            .prop_map(|(len, odd, at, end)| {
                let mut line = vec![b'x'; len];
                match odd {
                    Some(b'.') => line.insert(0, b'.'),
                    Some(byte) if len > 0 => line[at.index(len)] = byte,
                    _ => {}
                }
                line.extend_from_slice(end);
                line
            });
        proptest::collection::vec(line, 0..max_lines).prop_map(|lines| lines.concat())
    }

    proptest! {
        #[test]
        fn decoder_matches_reference_on_lines(
            mut input in line_structured(12),
            terminated in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            if terminated {
                input.extend_from_slice(b"\r\n.\r\n");
            }
            let (body, end) = reference_data(&input);
            let d = feed(u64::MAX, &split_at_points(&input, &cuts));
            prop_assert_eq!(&d.body[..], &body[..]);
            match end {
                Some(end) => {
                    prop_assert_eq!(d.summary, Some(reference_facts(&body, u64::MAX)));
                    prop_assert_eq!(&d.rest[..], &input[end..]);
                }
                None => prop_assert_eq!(d.summary, None),
            }
        }

        #[test]
        fn body_check_matches_reference_on_lines(
            input in line_structured(12),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut check = BodyCheck::new(u64::MAX);
            for piece in split_at_points(&input, &cuts) {
                check.update(piece);
            }
            prop_assert_eq!(check.finish(), reference_facts(&input, u64::MAX));
        }

        #[test]
        fn decoder_matches_reference(
            input in tricky_bytes(200),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            max_size in prop_oneof![Just(u64::MAX), 0u64..64],
        ) {
            let (body, end) = reference_data(&input);
            let d = feed(max_size, &split_at_points(&input, &cuts));
            let shown = body.len().min(usize::try_from(max_size).unwrap_or(usize::MAX));
            prop_assert_eq!(&d.body[..], &body[..shown]);
            match end {
                Some(end) => {
                    prop_assert_eq!(d.summary, Some(reference_facts(&body, max_size)));
                    prop_assert_eq!(&d.rest[..], &input[end..]);
                }
                None => {
                    prop_assert_eq!(d.summary, None);
                    prop_assert!(d.rest.is_empty());
                }
            }
        }

        #[test]
        fn decoder_split_anywhere_equals_one_buffer(
            input in tricky_bytes(120),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = feed(u64::MAX, &[&input]);
            prop_assert_eq!(feed(u64::MAX, &split_at_points(&input, &cuts)), whole);
        }

        #[test]
        fn decode_of_encode_is_normalised_input(
            input in tricky_bytes(300),
            encode_cuts in proptest::collection::vec(any::<usize>(), 0..6),
            decode_cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let wire = encode_pieces(true, &split_at_points(&input, &encode_cuts));
            // Any chunking on the encoding side gives the same wire bytes.
            prop_assert_eq!(&wire, &encode_pieces(true, &[&input]));
            let expected = normalise(&input);
            let d = feed(u64::MAX, &split_at_points(&wire, &decode_cuts));
            prop_assert_eq!(&d.body, &expected);
            prop_assert!(d.rest.is_empty());
            let s = d.summary.expect("encoded body ends");
            prop_assert!(!s.has_bare_line_ending());
            prop_assert_eq!(s, reference_facts(&expected, u64::MAX));
        }

        #[test]
        fn bdat_encoding_is_normalised_input(
            input in tricky_bytes(200),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let wire = encode_pieces(false, &split_at_points(&input, &cuts));
            prop_assert_eq!(&wire, &normalise(&input));
        }

        #[test]
        fn body_check_matches_reference(
            input in tricky_bytes(200),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            max_size in 0u64..256,
        ) {
            let mut check = BodyCheck::new(max_size);
            for piece in split_at_points(&input, &cuts) {
                check.update(piece);
            }
            prop_assert_eq!(check.finish(), reference_facts(&input, max_size));
        }

        #[test]
        fn bdat_split_anywhere_yields_exactly_size(
            input in proptest::collection::vec(any::<u8>(), 0..100),
            size in 0usize..100,
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut decoder = BdatDecoder::new(size as u64);
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            let mut ended = false;
            for piece in split_at_points(&input, &cuts) {
                src.extend_from_slice(piece);
                while let Some(event) = decoder.decode(&mut src) {
                    match event {
                        BdatEvent::Chunk(c) => {
                            prop_assert!(!c.is_empty());
                            got.extend_from_slice(&c);
                        }
                        BdatEvent::End => ended = true,
                    }
                }
            }
            let n = size.min(input.len());
            prop_assert_eq!(&got[..], &input[..n]);
            prop_assert_eq!(ended, size <= input.len());
            prop_assert_eq!(decoder.remaining(), (size - n) as u64);
        }
    }
}
