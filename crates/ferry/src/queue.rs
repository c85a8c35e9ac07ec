//! `ferry queue`: the queue of a running `ferry relay`, through its admin
//! interface (`--admin`), as tables or JSON.

use std::fmt::Write as _;
use std::net::SocketAddr;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::admin::CLIENT_TIMEOUT;

/// `ferry queue`.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// The admin interface of the relay (its --admin).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8025",
        global = true
    )]
    pub admin: SocketAddr,
    /// The environment variable holding the admin bearer token.
    #[arg(long, value_name = "VAR", global = true)]
    pub admin_token_env: Option<String>,
    /// Print the interface's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: QueueAction,
}

/// A `ferry queue` action.
#[derive(Debug, Clone, Subcommand)]
pub enum QueueAction {
    /// List queued messages (one page; --cursor for the next).
    List {
        /// queued, deferred or held.
        #[arg(long)]
        state: Option<String>,
        /// Only messages with a recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages from this sender (<> for bounces).
        #[arg(long)]
        sender: Option<String>,
        /// Only messages to this recipient.
        #[arg(long)]
        recipient: Option<String>,
        /// Only messages older than this (30m, 2h, 1d).
        #[arg(long)]
        older_than: Option<String>,
        /// Messages per page.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this message id (the previous page's next cursor).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One message: envelope, recipients, last replies.
    Show {
        /// The message id.
        id: String,
    },
    /// Pending recipients per destination and age.
    Summary,
    /// Retry deferred mail now.
    Flush {
        /// Only mail to this domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Hold a message: it is not tried until released.
    Hold {
        /// The message id.
        id: String,
    },
    /// Release a held message.
    Release {
        /// The message id.
        id: String,
    },
    /// Delete a message.
    Delete {
        /// The message id.
        id: String,
        /// Send the sender a bounce (RFC 3464) for it.
        #[arg(long)]
        bounce: bool,
    },
}

fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// A page of messages as a table.
pub fn list_table(page: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:>5}  {:<28}  {:<9}  {:<30}  LAST REPLY",
        "ID", "AGE", "SENDER", "STATE", "RECIPIENT"
    );
    for message in page["messages"].as_array().into_iter().flatten() {
        let id = message["id"].as_str().unwrap_or("");
        let sender = message["sender"].as_str().unwrap_or("");
        let mut first = true;
        for recipient in message["recipients"].as_array().into_iter().flatten() {
            let state = recipient["state"].as_str().unwrap_or("");
            if state == "delivered" || state == "failed" {
                continue;
            }
            let last = recipient["last"]["diagnostic"].as_str().unwrap_or("");
            let _ = writeln!(
                out,
                "{:<16}  {:>5}  {:<28}  {:<9}  {:<30}  {}",
                if first { id } else { "" },
                if first {
                    age(message["age_seconds"].as_u64().unwrap_or(0))
                } else {
                    String::new()
                },
                if first {
                    cut(sender, 28)
                } else {
                    String::new()
                },
                state,
                cut(recipient["address"].as_str().unwrap_or(""), 30),
                cut(last, 40),
            );
            first = false;
        }
    }
    if let Some(next) = page["next_cursor"].as_str() {
        let _ = writeln!(out, "more: --cursor {next}");
    }
    out
}

/// A summary as a destinations × age table.
pub fn summary_table(summary: &Value) -> String {
    let mut out = String::new();
    let buckets: Vec<&str> = summary["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let _ = write!(out, "{:<28} {:>7}", "DESTINATION", "TOTAL");
    for bucket in &buckets {
        let _ = write!(out, " {bucket:>7}");
    }
    out.push('\n');
    let mut totals = vec![0u64; buckets.len()];
    let mut all = 0;
    for domain in summary["domains"].as_array().into_iter().flatten() {
        let total = domain["total"].as_u64().unwrap_or(0);
        all += total;
        let name = domain["domain"].as_str().unwrap_or("");
        let _ = write!(
            out,
            "{:<28} {total:>7}",
            cut(if name.is_empty() { "(none)" } else { name }, 28)
        );
        for (n, count) in domain["counts"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let count = count.as_u64().unwrap_or(0);
            if let Some(t) = totals.get_mut(n) {
                *t += count;
            }
            let _ = write!(out, " {count:>7}");
        }
        out.push('\n');
    }
    let _ = write!(out, "{:<28} {all:>7}", "TOTAL");
    for total in totals {
        let _ = write!(out, " {total:>7}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "queued {}  deferred {}  held {}",
        summary["queued"], summary["deferred"], summary["held"]
    );
    out
}

/// One message as text.
pub fn show_text(message: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id:       {}", message["id"].as_str().unwrap_or(""));
    let _ = writeln!(
        out,
        "sender:   {}",
        message["sender"].as_str().unwrap_or("")
    );
    let _ = writeln!(out, "kind:     {}", message["kind"].as_str().unwrap_or(""));
    let _ = writeln!(
        out,
        "age:      {}{}",
        age(message["age_seconds"].as_u64().unwrap_or(0)),
        if message["held"].as_bool() == Some(true) {
            " (held)"
        } else {
            ""
        }
    );
    for recipient in message["recipients"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "to:       {}  [{}]  attempts {}",
            recipient["address"].as_str().unwrap_or(""),
            recipient["state"].as_str().unwrap_or(""),
            recipient["attempts"]
        );
        if let Some(last) = recipient["last"]["diagnostic"].as_str() {
            let remote = recipient["last"]["remote_mta"].as_str().unwrap_or("-");
            let _ = writeln!(out, "          last: {last} (from {remote})");
        }
        if let Some(next) = recipient["next_attempt"].as_u64() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let _ = writeln!(
                out,
                "          next attempt in {}",
                age(next.saturating_sub(now))
            );
        }
    }
    out
}

/// Runs `ferry queue`; the process exit code.
pub async fn run(args: QueueArgs) -> u8 {
    match execute(&args).await {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(message) => {
            eprintln!("ferry queue: {message}");
            1
        }
    }
}

async fn execute(args: &QueueArgs) -> Result<String, String> {
    let (method, path) = match &args.action {
        QueueAction::List {
            state,
            domain,
            sender,
            recipient,
            older_than,
            limit,
            cursor,
        } => (
            "GET",
            format!(
                "/queue{}",
                query(&[
                    ("state", state),
                    ("domain", domain),
                    ("sender", sender),
                    ("recipient", recipient),
                    ("older_than", older_than),
                    ("limit", &Some(limit.to_string())),
                    ("cursor", cursor),
                ])
            ),
        ),
        QueueAction::Show { id } => ("GET", format!("/queue/{}", encode(id))),
        QueueAction::Summary => ("GET", "/queue/summary".to_owned()),
        QueueAction::Flush { domain } => (
            "POST",
            format!("/queue/flush{}", query(&[("domain", domain)])),
        ),
        QueueAction::Hold { id } => ("POST", format!("/queue/{}/hold", encode(id))),
        QueueAction::Release { id } => ("POST", format!("/queue/{}/release", encode(id))),
        QueueAction::Delete { id, bounce } => (
            "DELETE",
            format!(
                "/queue/{}{}",
                encode(id),
                if *bounce { "?bounce=true" } else { "" }
            ),
        ),
    };
    let token = match &args.admin_token_env {
        Some(var) => Some(std::env::var(var).map_err(|_| format!("{var} is not set"))?),
        None => None,
    };
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(value) = &authorization {
        headers.push(("Authorization", value.as_str()));
    }
    let response = crate::http::request(
        method,
        &args.admin.to_string(),
        &path,
        &headers,
        b"",
        CLIENT_TIMEOUT,
    )
    .await?;
    let value: Value = serde_json::from_slice(&response.body).map_err(|e| {
        format!(
            "the admin interface answered {} with no JSON: {e}",
            response.status
        )
    })?;
    if !(200..300).contains(&response.status) {
        return Err(format!(
            "{} ({})",
            value["error"].as_str().unwrap_or("refused"),
            response.status
        ));
    }
    if args.json {
        return Ok(format!("{value:#}\n"));
    }
    Ok(match &args.action {
        QueueAction::List { .. } => list_table(&value),
        QueueAction::Show { .. } => show_text(&value),
        QueueAction::Summary => summary_table(&value),
        QueueAction::Flush { .. } => format!("{} recipients to retry now\n", value["flushed"]),
        QueueAction::Hold { id } => format!("{id} held\n"),
        QueueAction::Release { id } => format!("{id} released\n"),
        QueueAction::Delete { id, bounce } => {
            format!(
                "{id} deleted{}\n",
                if *bounce { "; the sender is told" } else { "" }
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_summary_is_a_table_of_destinations_by_age() {
        let summary = json!({
            "buckets": ["<5m", "<10m", ">=10m"],
            "domains": [
                {"domain": "example.net", "total": 3, "counts": [1, 0, 2]},
                {"domain": "example.org", "total": 1, "counts": [0, 1, 0]},
            ],
            "queued": 1, "deferred": 3, "held": 0,
        });
        let table = summary_table(&summary);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("DESTINATION"));
        assert!(lines[1].starts_with("example.net") && lines[1].ends_with("1       0       2"));
        assert!(lines[3].starts_with("TOTAL") && lines[3].contains(" 4 "));
        assert_eq!(lines[4], "queued 1  deferred 3  held 0");
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            query(&[("sender", &Some("<a b>".to_owned())), ("domain", &None)]),
            "?sender=%3Ca%20b%3E"
        );
        assert_eq!(query(&[("domain", &None)]), "");
    }
}
