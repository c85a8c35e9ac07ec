//! The rule language: one rule per line, `stage {condition} action`.
//!
//! The grammar is in the [module documentation](crate::faults).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use smtp_proto::{EnhancedCode, Reply};

/// Where in a session a rule is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// The connection was accepted; nothing has been sent yet.
    Connect,
    /// The `220` greeting is about to be sent.
    Greeting,
    /// `EHLO`, `HELO` or `LHLO`.
    Ehlo,
    /// `AUTH`, once the client's credentials are in.
    Auth,
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`, once per recipient.
    Rcpt,
    /// `DATA` or the first `BDAT`: after the `354`, before the message is
    /// read.
    Data,
    /// The message has been read; its final reply is about to be sent.
    EndOfData,
    /// `QUIT`, before the `221`.
    Quit,
}

impl Stage {
    /// The keyword the rule language uses.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Greeting => "greeting",
            Self::Ehlo => "ehlo",
            Self::Auth => "auth",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::Data => "data",
            Self::EndOfData => "end-of-data",
            Self::Quit => "quit",
        }
    }

    fn from_keyword(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "connect" => Self::Connect,
            "greeting" | "banner" => Self::Greeting,
            "ehlo" | "helo" | "lhlo" => Self::Ehlo,
            "auth" => Self::Auth,
            "mail" => Self::Mail,
            "rcpt" => Self::Rcpt,
            "data" | "bdat" => Self::Data,
            "end-of-data" | "eod" | "dot" => Self::EndOfData,
            "quit" => Self::Quit,
            _ => return None,
        })
    }

    /// Whether the sender is known at this stage.
    fn knows_sender(self) -> bool {
        matches!(self, Self::Mail | Self::Rcpt | Self::Data | Self::EndOfData)
    }

    /// Whether recipients are known at this stage.
    fn knows_recipients(self) -> bool {
        matches!(self, Self::Rcpt | Self::Data | Self::EndOfData)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// An inclusive range of counts: `3`, `2..`, `..4`, `2..5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRange {
    /// The first count that matches.
    pub first: u64,
    /// The last count that matches.
    pub last: u64,
}

impl CountRange {
    /// Whether `n` is in the range.
    pub fn contains(self, n: u64) -> bool {
        (self.first..=self.last).contains(&n)
    }
}

/// Whose messages a rate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// Messages from the same client IP address.
    Client,
    /// Messages in the same connection.
    Connection,
    /// Every message the server receives.
    Server,
}

/// A condition of a rule; every condition must hold for the rule to fire.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Condition {
    /// The reverse-path matches the glob (`<>` is the empty string).
    From(Glob),
    /// The recipient (at `rcpt`) or any recipient (later) matches.
    To(Glob),
    /// The client's IP address, as text, matches.
    Client(Glob),
    /// The server-wide message number (counted at each `MAIL`) is in the
    /// range.
    Message(CountRange),
    /// The server-wide connection number is in the range.
    Connection(CountRange),
    /// More than `limit` messages (counted at each `MAIL`, this one
    /// included) within `window`.
    Rate {
        /// The count that may be reached but not exceeded.
        limit: u64,
        /// The sliding window.
        window: Duration,
        /// Whose messages count.
        scope: RateScope,
    },
    /// True with this probability, drawn from the seeded generator.
    Chance(f64),
}

/// What a rule does when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Send the reply one octet per this interval.
    pub drip: Option<Duration>,
    /// What happens after the delay.
    pub then: Then,
}

/// The outcome part of an [`Action`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Then {
    /// Go on as usual (a rule with only `delay` or `drip`).
    Proceed,
    /// Send this reply instead of the usual one. A `421` reply closes the
    /// connection after it is sent (RFC 5321 §3.8).
    Reply(Reply),
    /// Close the connection; with `reply_421`, after a `421 4.3.2`.
    Close {
        /// Whether a `421` goes out before the connection is closed.
        reply_421: bool,
    },
    /// `451 4.7.1` until the same client, sender and recipient come back
    /// at least `retry_after` after their first attempt.
    Greylist {
        /// How long the client must wait before a retry is accepted.
        retry_after: Duration,
    },
    /// Answer `250` as if the message was accepted, and discard it.
    Drop,
    /// Stop reading and answering for `duration`, then close.
    StopReading {
        /// How long the connection hangs before it is closed.
        duration: Duration,
    },
}

/// One parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// 1-based line number in the source.
    pub line: usize,
    /// The rule as written, without comment.
    pub text: String,
    /// Where it is checked.
    pub stage: Stage,
    /// All must hold.
    pub conditions: Vec<Condition>,
    /// What it does.
    pub action: Action,
}

/// A case-insensitive glob: `*` matches any run of characters, `?` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// A glob from its pattern.
    pub fn new(pattern: &str) -> Self {
        Self(pattern.to_lowercase())
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.to_lowercase().chars().collect();
        let pattern: Vec<char> = self.0.chars().collect();
        // Iterative matching with one backtrack point for the last `*`.
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
                p += 1;
                t += 1;
            } else if p < pattern.len() && pattern[p] == '*' {
                star = Some((p, t));
                p += 1;
            } else if let Some((star_p, star_t)) = star {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            } else {
                return false;
            }
        }
        pattern[p..].iter().all(|&c| c == '*')
    }
}

/// A rule file that does not parse: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters) where the problem starts.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// A parsed rule file.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    pub(crate) magic: bool,
    pub(crate) seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    text: String,
    quoted: bool,
    column: usize,
}

fn tokenize(line: &str, line_no: usize) -> Result<(Vec<Token>, usize), ParseError> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut end = chars.len();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            end = i;
            break;
        } else if c == '"' {
            let column = i + 1;
            let mut text = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ParseError {
                            line: line_no,
                            column,
                            message: "unterminated string".to_owned(),
                        });
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some(&escaped @ ('"' | '\\')) => text.push(escaped),
                            _ => {
                                return Err(ParseError {
                                    line: line_no,
                                    column: i + 1,
                                    message: r#"only \" and \\ are escapes"#.to_owned(),
                                });
                            }
                        }
                        i += 2;
                    }
                    Some(&other) => {
                        text.push(other);
                        i += 1;
                    }
                }
            }
            tokens.push(Token {
                text,
                quoted: true,
                column,
            });
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '"' {
                i += 1;
            }
            tokens.push(Token {
                text: chars[start..i].iter().collect(),
                quoted: false,
                column: start + 1,
            });
        }
    }
    Ok((tokens, end))
}

struct Cursor<'t> {
    tokens: &'t [Token],
    next: usize,
    line: usize,
    end_column: usize,
}

impl<'t> Cursor<'t> {
    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.next)
    }

    fn take(&mut self) -> Option<&'t Token> {
        let token = self.tokens.get(self.next);
        if token.is_some() {
            self.next += 1;
        }
        token
    }

    fn error(&self, column: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line,
            column,
            message: message.into(),
        }
    }

    fn here(&self) -> usize {
        self.peek().map_or(self.end_column, |token| token.column)
    }

    fn expect(&mut self, what: &str) -> Result<&'t Token, ParseError> {
        let column = self.here();
        self.take()
            .ok_or_else(|| self.error(column, format!("expected {what}")))
    }

    fn keyword_is(&self, word: &str) -> bool {
        self.peek()
            .is_some_and(|token| !token.quoted && token.text.eq_ignore_ascii_case(word))
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn parse_range(text: &str) -> Option<CountRange> {
    let number = |s: &str| s.parse::<u64>().ok().filter(|&n| n >= 1);
    let range = if let Some((first, last)) = text.split_once("..") {
        CountRange {
            first: if first.is_empty() { 1 } else { number(first)? },
            last: if last.is_empty() {
                u64::MAX
            } else {
                number(last)?
            },
        }
    } else {
        let n = number(text)?;
        CountRange { first: n, last: n }
    };
    (range.first <= range.last).then_some(range)
}

fn duration_token(cursor: &mut Cursor<'_>, what: &str) -> Result<Duration, ParseError> {
    let token = cursor.expect(what)?;
    parse_duration(&token.text).ok_or_else(|| {
        cursor.error(
            token.column,
            format!(
                "expected {what} such as 500ms, 5s or 2m, found {:?}",
                token.text
            ),
        )
    })
}

fn optional_duration(cursor: &mut Cursor<'_>) -> Option<Duration> {
    let duration = cursor
        .peek()
        .filter(|token| !token.quoted)
        .and_then(|token| parse_duration(&token.text));
    if duration.is_some() {
        cursor.take();
    }
    duration
}

const DEFAULT_GREYLIST: Duration = Duration::from_secs(60);
const DEFAULT_STOP_READING: Duration = Duration::from_secs(60);

fn parse_condition(cursor: &mut Cursor<'_>, stage: Stage) -> Result<Option<Condition>, ParseError> {
    let Some(token) = cursor.peek() else {
        return Ok(None);
    };
    if token.quoted {
        return Err(cursor.error(token.column, "expected a condition or an action"));
    }
    let word = token.text.to_ascii_lowercase();
    let column = token.column;
    let condition = match word.as_str() {
        "from" | "to" | "client" => {
            cursor.take();
            if word == "from" && !stage.knows_sender() {
                return Err(cursor.error(column, format!("the sender is not known at {stage}")));
            }
            if word == "to" && !stage.knows_recipients() {
                return Err(cursor.error(column, format!("recipients are not known at {stage}")));
            }
            let glob = Glob::new(&cursor.expect("a pattern such as \"*@example.com\"")?.text);
            match word.as_str() {
                "from" => Condition::From(glob),
                "to" => Condition::To(glob),
                _ => Condition::Client(glob),
            }
        }
        "message" | "connection" => {
            cursor.take();
            let token = cursor.expect("a number or range such as 3, 2.. or 1..4")?;
            let range = parse_range(&token.text).ok_or_else(|| {
                cursor.error(
                    token.column,
                    format!(
                        "expected a number or range such as 3, 2.. or 1..4 (counts start at 1), found {:?}",
                        token.text
                    ),
                )
            })?;
            if word == "message" {
                if !stage.knows_sender() {
                    return Err(cursor.error(column, format!("no message is under way at {stage}")));
                }
                Condition::Message(range)
            } else {
                Condition::Connection(range)
            }
        }
        "rate" => {
            cursor.take();
            let token = cursor.expect("a rate such as 10/min")?;
            let parsed = token.text.split_once('/').and_then(|(count, unit)| {
                let limit = count.parse::<u64>().ok()?;
                let window = match unit {
                    "s" | "sec" => Duration::from_secs(1),
                    "min" | "m" => Duration::from_secs(60),
                    "h" | "hour" => Duration::from_secs(3600),
                    _ => return None,
                };
                Some((limit, window))
            });
            let Some((limit, window)) = parsed else {
                return Err(cursor.error(
                    token.column,
                    format!("expected a rate such as 10/min, found {:?}", token.text),
                ));
            };
            if !stage.knows_sender() {
                return Err(cursor.error(column, format!("messages are not counted at {stage}")));
            }
            let mut scope = RateScope::Client;
            if cursor.keyword_is("per") {
                cursor.take();
                let token = cursor.expect("client, connection or server")?;
                scope = match token.text.to_ascii_lowercase().as_str() {
                    "client" => RateScope::Client,
                    "connection" => RateScope::Connection,
                    "server" | "all" => RateScope::Server,
                    _ => {
                        return Err(cursor.error(
                            token.column,
                            format!(
                                "expected client, connection or server, found {:?}",
                                token.text
                            ),
                        ));
                    }
                };
            }
            Condition::Rate {
                limit,
                window,
                scope,
            }
        }
        "chance" => {
            cursor.take();
            let token = cursor.expect("a probability such as 0.1 or 10%")?;
            let probability = match token.text.strip_suffix('%') {
                Some(percent) => percent.parse::<f64>().ok().map(|p| p / 100.0),
                None => token.text.parse::<f64>().ok(),
            }
            .filter(|p| (0.0..=1.0).contains(p));
            let Some(probability) = probability else {
                return Err(cursor.error(
                    token.column,
                    format!(
                        "expected a probability between 0 and 1 (or 0% and 100%), found {:?}",
                        token.text
                    ),
                ));
            };
            Condition::Chance(probability)
        }
        _ => return Ok(None),
    };
    Ok(Some(condition))
}

fn parse_reply(cursor: &mut Cursor<'_>) -> Result<Reply, ParseError> {
    let token = cursor.expect("a reply code such as 550")?;
    let code: u16 = token
        .text
        .parse()
        .ok()
        .filter(|code| (200..=599).contains(code) && !token.quoted)
        .ok_or_else(|| {
            cursor.error(
                token.column,
                format!(
                    "expected a reply code from 400 to 599, found {:?}",
                    token.text
                ),
            )
        })?;
    // A rule's reply stands for a refusal: the server treats the command
    // as refused whatever the code says, so a 2xx or 3xx would mislead.
    if code < 400 {
        return Err(cursor.error(
            token.column,
            format!("a rule's reply refuses the command: use a 4xx or 5xx code, not {code} (delay or drip change how the usual reply is sent)"),
        ));
    }
    let mut enhanced = None;
    if let Some(token) = cursor.peek().filter(|token| !token.quoted) {
        let parsed = EnhancedCode::parse(&token.text).ok_or_else(|| {
            cursor.error(
                token.column,
                format!(
                    "expected an enhanced status code such as 5.1.1 or a quoted text, found {:?}",
                    token.text
                ),
            )
        })?;
        // RFC 3463 §2: the class of the enhanced code matches the reply's.
        if u16::from(parsed.class) != code / 100 {
            return Err(cursor.error(
                token.column,
                format!("enhanced code {parsed} does not match the class of {code}"),
            ));
        }
        enhanced = Some(parsed);
        cursor.take();
    }
    let mut lines = Vec::new();
    while let Some(token) = cursor.peek().filter(|token| token.quoted) {
        if token.text.chars().any(char::is_control) {
            return Err(cursor.error(token.column, "reply text cannot hold control characters"));
        }
        lines.push(token.text.clone());
        cursor.take();
    }
    if lines.is_empty() {
        lines.push(default_text(code).to_owned());
    }
    Ok(Reply::with_lines(code, enhanced, lines))
}

/// Text for a reply written without one.
pub(crate) fn default_text(code: u16) -> &'static str {
    match code {
        421 => "Service not available, closing transmission channel",
        450 | 550 => "Requested action not taken: mailbox unavailable",
        451 => "Requested action aborted: local error in processing",
        452 => "Requested action not taken: insufficient system storage",
        552 => "Requested mail action aborted: exceeded storage allocation",
        553 => "Requested action not taken: mailbox name not allowed",
        554 => "Transaction failed",
        _ if code < 400 => "OK",
        _ => "Request refused",
    }
}

fn parse_action(cursor: &mut Cursor<'_>, stage: Stage) -> Result<Action, ParseError> {
    let mut action = Action {
        delay: None,
        drip: None,
        then: Then::Proceed,
    };
    let start = cursor.here();
    let mut any = false;
    while let Some(token) = cursor.peek() {
        if token.quoted {
            return Err(cursor.error(token.column, "expected an action"));
        }
        let column = token.column;
        let word = token.text.to_ascii_lowercase();
        if any && !matches!(action.then, Then::Proceed) {
            return Err(cursor.error(
                column,
                format!("unexpected {:?} after the action", token.text),
            ));
        }
        cursor.take();
        any = true;
        match word.as_str() {
            "delay" => action.delay = Some(duration_token(cursor, "a delay")?),
            "drip" => action.drip = Some(duration_token(cursor, "an interval per octet")?),
            "accept" | "proceed" => {}
            "reply" => action.then = Then::Reply(parse_reply(cursor)?),
            "close" => {
                let reply_421 = cursor.keyword_is("421");
                if reply_421 {
                    cursor.take();
                }
                action.then = Then::Close { reply_421 };
            }
            "greylist" => {
                if !stage.knows_sender() {
                    return Err(cursor.error(
                        column,
                        format!("greylisting needs a sender; {stage} has none"),
                    ));
                }
                action.then = Then::Greylist {
                    retry_after: optional_duration(cursor).unwrap_or(DEFAULT_GREYLIST),
                };
            }
            "drop" => {
                if !matches!(stage, Stage::Data | Stage::EndOfData) {
                    return Err(cursor.error(column, "drop applies to data or end-of-data"));
                }
                action.then = Then::Drop;
            }
            "stop-reading" => {
                action.then = Then::StopReading {
                    duration: optional_duration(cursor).unwrap_or(DEFAULT_STOP_READING),
                };
            }
            _ => {
                return Err(cursor.error(
                    column,
                    format!(
                        "unknown condition or action {:?} (conditions: from, to, client, message, connection, rate, chance; actions: reply, delay, drip, close, greylist, drop, stop-reading, accept)",
                        token.text
                    ),
                ));
            }
        }
    }
    if !any {
        return Err(cursor.error(
            start,
            "expected an action (reply, delay, drip, close, greylist, drop, stop-reading)",
        ));
    }
    Ok(action)
}

pub(crate) fn parse(source: &str) -> Result<RuleSet, ParseError> {
    let mut set = RuleSet::default();
    for (index, line) in source.lines().enumerate() {
        let line_no = index + 1;
        let (tokens, end) = tokenize(line, line_no)?;
        let mut cursor = Cursor {
            tokens: &tokens,
            next: 0,
            line: line_no,
            end_column: end + 1,
        };
        let Some(first) = cursor.take() else {
            continue;
        };
        let word = first.text.to_ascii_lowercase();
        if !first.quoted && word == "magic" {
            set.magic = true;
        } else if !first.quoted && word == "seed" {
            let token = cursor.expect("a number")?;
            set.seed = Some(token.text.parse().map_err(|_| {
                cursor.error(
                    token.column,
                    format!("expected a number, found {:?}", token.text),
                )
            })?);
        } else {
            let stage = Stage::from_keyword(&first.text)
                .filter(|_| !first.quoted)
                .ok_or_else(|| {
                    cursor.error(
                        first.column,
                        format!(
                            "expected a stage (connect, greeting, ehlo, auth, mail, rcpt, data, end-of-data, quit), seed or magic, found {:?}",
                            first.text
                        ),
                    )
                })?;
            let mut conditions = Vec::new();
            while let Some(condition) = parse_condition(&mut cursor, stage)? {
                conditions.push(condition);
            }
            let action = parse_action(&mut cursor, stage)?;
            set.rules.push(Rule {
                line: line_no,
                text: line[..line.char_indices().nth(end).map_or(line.len(), |(i, _)| i)]
                    .trim()
                    .to_owned(),
                stage,
                conditions,
                action,
            });
        }
        if let Some(extra) = cursor.take() {
            return Err(cursor.error(extra.column, format!("unexpected {:?}", extra.text)));
        }
    }
    Ok(set)
}

impl FromStr for RuleSet {
    type Err = ParseError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        parse(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(source: &str) -> String {
        parse(source).unwrap_err().to_string()
    }

    #[test]
    fn globs_match_whole_addresses_case_insensitively() {
        let glob = Glob::new("*@Blocked.test");
        assert!(glob.matches("bob@blocked.test"));
        assert!(glob.matches("@BLOCKED.test"));
        assert!(!glob.matches("bob@blocked.test.org"));
        assert!(Glob::new("a?c*").matches("abcdef"));
        assert!(!Glob::new("a?c").matches("ac"));
        assert!(Glob::new("*a*b*").matches("xxaxxbxx"));
        assert!(Glob::new("").matches(""));
    }

    #[test]
    fn the_example_rule_parses() {
        let set = parse(r#"rcpt to "*@blocked.test" reply 550 5.1.1 "no such user""#).unwrap();
        let rule = &set.rules[0];
        assert_eq!(rule.stage, Stage::Rcpt);
        assert_eq!(
            rule.conditions,
            vec![Condition::To(Glob::new("*@blocked.test"))]
        );
        let Then::Reply(reply) = &rule.action.then else {
            panic!("not a reply: {rule:?}");
        };
        assert_eq!(reply.to_string(), "550 5.1.1 no such user");
    }

    #[test]
    fn every_form_parses() {
        let source = "
            # comments and blank lines are skipped
            seed 7
            magic
            connect connection 3 close
            greeting delay 2s drip 50ms
            ehlo client \"127.0.0.*\" reply 421 4.7.0 \"go away\"
            mail from \"*@spam.test\" rate 10/min per client reply 450 4.7.1 \"slow down\"
            mail rate 3/min per connection reply 421 4.7.0 \"too many\"
            rcpt message ..2 reply 451 4.3.0 \"try later\"   # trailing comment
            rcpt to \"grey@*\" greylist 30s
            data chance 50% stop-reading 10s
            end-of-data message 5.. drop
            eod reply 452 4.3.1 \"line one\" \"line two\"
            auth close 421
            quit delay 1s reply 421 4.3.2 \"bye now\"
        ";
        let set = parse(source).unwrap();
        assert!(set.magic);
        assert_eq!(set.seed, Some(7));
        assert_eq!(set.rules.len(), 12);
        assert_eq!(set.rules[11].stage, Stage::Quit);
        assert_eq!(set.rules[0].line, 5);
        assert_eq!(set.rules[0].text, "connect connection 3 close");
        assert_eq!(
            set.rules[1].action,
            Action {
                delay: Some(Duration::from_secs(2)),
                drip: Some(Duration::from_millis(50)),
                then: Then::Proceed
            }
        );
        assert_eq!(
            set.rules[4].conditions,
            vec![Condition::Rate {
                limit: 3,
                window: Duration::from_secs(60),
                scope: RateScope::Connection
            }]
        );
        assert_eq!(
            set.rules[5].conditions,
            vec![Condition::Message(CountRange { first: 1, last: 2 })]
        );
        assert_eq!(
            set.rules[6].action.then,
            Then::Greylist {
                retry_after: Duration::from_secs(30)
            }
        );
        assert_eq!(set.rules[7].conditions, vec![Condition::Chance(0.5)]);
        let Then::Reply(multi) = &set.rules[9].action.then else {
            panic!();
        };
        assert_eq!(multi.lines().len(), 2);
        assert_eq!(set.rules[10].action.then, Then::Close { reply_421: true });
    }

    #[test]
    fn errors_name_line_and_column() {
        assert_eq!(
            error("rcpt reply 550\nrcpt to \"x\" reply 5x0"),
            "line 2, column 19: expected a reply code from 400 to 599, found \"5x0\""
        );
        assert_eq!(
            error("mail to \"a@b\" reply 550"),
            "line 1, column 6: recipients are not known at mail"
        );
        assert_eq!(
            error("rcpt reply 550 4.1.1"),
            "line 1, column 16: enhanced code 4.1.1 does not match the class of 550"
        );
        assert_eq!(
            error("rcpt to \"abc"),
            "line 1, column 9: unterminated string"
        );
        assert_eq!(
            error("rcpt"),
            "line 1, column 5: expected an action (reply, delay, drip, close, greylist, drop, stop-reading)"
        );
        assert!(error("  recpt reply 550").starts_with("line 1, column 3: expected a stage"));
        assert_eq!(
            error("rcpt delay fast"),
            "line 1, column 12: expected a delay such as 500ms, 5s or 2m, found \"fast\""
        );
        assert_eq!(
            error("rcpt reply 550 \"x\" close"),
            "line 1, column 20: unexpected \"close\" after the action"
        );
        assert_eq!(
            error("mail drop"),
            "line 1, column 6: drop applies to data or end-of-data"
        );
        assert_eq!(
            error("rcpt message 0 reply 550"),
            "line 1, column 14: expected a number or range such as 3, 2.. or 1..4 (counts start at 1), found \"0\""
        );
        assert!(
            error("greeting reply 220 \"hi\"")
                .starts_with("line 1, column 16: a rule's reply refuses")
        );
        assert!(error("rcpt chance 2 reply 550").contains("between 0 and 1"));
    }
}
