//! The envelope of a message (RFC 5321 §2.3.1: reverse-path, forward-paths
//! and their parameters) and the per-recipient outcome of a send.

use smtp_proto::Reply;
use smtp_proto::address::Address;
use smtp_proto::command::{Notify, OriginalRecipient, Ret};

use crate::config::has_forbidden_byte;
use crate::error::Error;

/// RFC 3461 §4.4: an `ENVID` is at most 100 characters.
pub const ENVID_MAX: usize = 100;

/// RFC 3461 §4.2: an `ORCPT` value is at most 500 characters.
pub const ORCPT_MAX: usize = 500;

/// One recipient with its RFC 3461 DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    address: Address,
    notify: Option<Notify>,
    orcpt: Option<OriginalRecipient>,
}

impl Recipient {
    /// A recipient without DSN parameters, from an [`Address`] or a string
    /// such as `"bob@example.org"`.
    ///
    /// ```
    /// use smtp_client::{Notify, Recipient};
    /// let recipient = Recipient::new("bob@example.org")?.notify(Notify::Never);
    /// assert_eq!(recipient.address().as_str(), "bob@example.org");
    /// # Ok::<(), smtp_client::Error>(())
    /// ```
    pub fn new(address: impl TryInto<Address, Error: Into<Error>>) -> Result<Self, Error> {
        Ok(Self::from_address(to_address(address)?))
    }

    fn from_address(address: Address) -> Self {
        Self {
            address,
            notify: None,
            orcpt: None,
        }
    }

    /// `NOTIFY=` (RFC 3461 §4.1): when to send delivery status
    /// notifications. Sent only when the server offers `DSN`.
    pub fn notify(mut self, notify: Notify) -> Self {
        self.notify = Some(notify);
        self
    }

    /// `ORCPT=` (RFC 3461 §4.2): the original recipient, for example
    /// `("rfc822", "user@example.com")`. Sent only when the server offers
    /// `DSN`.
    pub fn orcpt(mut self, addr_type: impl Into<String>, address: impl Into<String>) -> Self {
        self.orcpt = Some(OriginalRecipient {
            addr_type: addr_type.into(),
            address: address.into(),
        });
        self
    }

    /// The mailbox.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The `NOTIFY` parameter.
    pub fn notify_value(&self) -> Option<Notify> {
        self.notify
    }

    /// The `ORCPT` parameter.
    pub fn orcpt_value(&self) -> Option<&OriginalRecipient> {
        self.orcpt.as_ref()
    }

    fn validate(&self) -> Result<(), Error> {
        if let Some(orcpt) = &self.orcpt {
            let addr_type_ok = !orcpt.addr_type.is_empty()
                && orcpt
                    .addr_type
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
            if !addr_type_ok {
                return Err(Error::invalid(format!(
                    "invalid ORCPT address type {:?}",
                    orcpt.addr_type
                )));
            }
            if orcpt.address.is_empty()
                || has_forbidden_byte(&orcpt.address)
                || orcpt.address.chars().any(char::is_control)
            {
                return Err(Error::invalid(
                    "CR, LF, NUL or another control character in ORCPT",
                ));
            }
            if orcpt.addr_type.len() + 1 + orcpt.address.len() > ORCPT_MAX {
                return Err(Error::invalid("ORCPT longer than 500 characters"));
            }
        }
        Ok(())
    }
}

impl From<Address> for Recipient {
    fn from(address: Address) -> Self {
        Recipient::from_address(address)
    }
}

/// Converts an address argument, turning its error into the client's.
fn to_address(value: impl TryInto<Address, Error: Into<Error>>) -> Result<Address, Error> {
    value.try_into().map_err(Into::into)
}

/// The envelope: sender, recipients and the transaction's parameters.
///
/// Built with [`Envelope::new`] or [`Envelope::builder`]; both validate
/// everything that will be written, so a CR, LF or NUL in a parameter is an
/// error before a connection is even opened.
///
/// ```
/// use smtp_client::Envelope;
/// let envelope = Envelope::new("alice@example.com", ["bob@example.org"])?;
/// assert_eq!(envelope.recipients().len(), 1);
/// # Ok::<(), smtp_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    from: Option<Address>,
    recipients: Vec<Recipient>,
    ret: Option<Ret>,
    envid: Option<String>,
    smtputf8: bool,
    requiretls: bool,
}

impl Envelope {
    /// An envelope from `from` to `to`, which must not be empty. Addresses
    /// are [`Address`]es or strings (`"alice@example.com"`); an invalid one
    /// is an [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)
    /// error.
    pub fn new<T>(
        from: impl TryInto<Address, Error: Into<Error>>,
        to: impl IntoIterator<Item = T>,
    ) -> Result<Self, Error>
    where
        T: TryInto<Address, Error: Into<Error>>,
    {
        let mut builder = Envelope::builder().from(from);
        for address in to {
            builder = builder.to(address);
        }
        builder.build()
    }

    /// An envelope with the null reverse-path `<>` (RFC 5321 §4.5.5: for
    /// delivery status notifications and other automatic replies).
    ///
    /// ```
    /// use smtp_client::Envelope;
    /// let bounce = Envelope::null_sender(["alice@example.com"])?;
    /// assert!(bounce.from().is_none());
    /// # Ok::<(), smtp_client::Error>(())
    /// ```
    pub fn null_sender<T>(to: impl IntoIterator<Item = T>) -> Result<Self, Error>
    where
        T: TryInto<Address, Error: Into<Error>>,
    {
        let mut builder = Envelope::builder();
        for address in to {
            builder = builder.to(address);
        }
        builder.build()
    }

    /// The envelope a message's own header fields describe, as RFC 5322
    /// §3.6.6 has it: when the message was resent (it has `Resent-*`
    /// fields), the sender of the newest resent block (`Resent-Sender`,
    /// else `Resent-From`) and its `Resent-To`, `Resent-Cc` and
    /// `Resent-Bcc`; otherwise `Sender`, else the first `From` mailbox, and
    /// every `To`, `Cc` and `Bcc` mailbox. Display names, comments and
    /// group names are dropped, folded fields unfolded, quoted local parts
    /// kept; a recipient named twice is sent once.
    ///
    /// The message itself is not changed: a `Bcc` field in it reaches
    /// every recipient, so leave it out of messages you build (mail
    /// builders such as `mail-builder` do not write it).
    ///
    /// ```
    /// use smtp_client::Envelope;
    /// let message = b"From: Alice <alice@example.com>\r\n\
    ///     To: Bob <bob@example.org>, team: carol@example.org, \"d e\"@example.org;\r\n\
    ///     Subject: hello\r\n\r\nHi!\r\n";
    /// let envelope = Envelope::from_message(message)?;
    /// assert_eq!(envelope.from().unwrap().as_str(), "alice@example.com");
    /// let to: Vec<&str> = envelope.recipients().iter().map(|r| r.address().as_str()).collect();
    /// assert_eq!(to, ["bob@example.org", "carol@example.org", "\"d e\"@example.org"]);
    /// # Ok::<(), smtp_client::Error>(())
    /// ```
    pub fn from_message(message: &[u8]) -> Result<Self, Error> {
        let (sender, recipients) = crate::headers::envelope_addresses(message)?;
        Envelope::new(sender, recipients)
    }

    /// A builder for envelopes with DSN or other parameters.
    pub fn builder() -> EnvelopeBuilder {
        EnvelopeBuilder::default()
    }

    /// The reverse-path; `None` is `<>`.
    pub fn from(&self) -> Option<&Address> {
        self.from.as_ref()
    }

    /// The recipients, in the order they are sent.
    pub fn recipients(&self) -> &[Recipient] {
        &self.recipients
    }

    /// `RET=` (RFC 3461 §4.3).
    pub fn ret(&self) -> Option<Ret> {
        self.ret
    }

    /// `ENVID=` (RFC 3461 §4.4), not yet xtext-encoded.
    pub fn envid(&self) -> Option<&str> {
        self.envid.as_deref()
    }

    /// Whether `SMTPUTF8` (RFC 6531) is requested: set explicitly, or
    /// because an address holds non-ASCII characters.
    pub fn needs_smtputf8(&self) -> bool {
        self.smtputf8
            || self.from.as_ref().is_some_and(Address::is_utf8)
            || self
                .recipients
                .iter()
                .any(|recipient| recipient.address.is_utf8())
    }

    /// Whether `REQUIRETLS` (RFC 8689) is requested.
    pub fn requiretls(&self) -> bool {
        self.requiretls
    }

    /// Whether any DSN parameter (RFC 3461) is set.
    pub fn has_dsn_parameters(&self) -> bool {
        self.ret.is_some()
            || self.envid.is_some()
            || self
                .recipients
                .iter()
                .any(|recipient| recipient.notify.is_some() || recipient.orcpt.is_some())
    }

    /// Checks every value that will be written.
    pub fn validate(&self) -> Result<(), Error> {
        if self.recipients.is_empty() {
            return Err(Error::invalid("the envelope has no recipient"));
        }
        if let Some(envid) = &self.envid {
            // RFC 3461 §4.4: printable US-ASCII, at most 100 characters.
            if envid.is_empty()
                || envid.len() > ENVID_MAX
                || !envid.bytes().all(|byte| (0x20..0x7f).contains(&byte))
            {
                return Err(Error::invalid(
                    "ENVID must be 1 to 100 printable US-ASCII characters",
                ));
            }
        }
        for recipient in &self.recipients {
            recipient.validate()?;
        }
        Ok(())
    }
}

/// Builder for [`Envelope`]. An invalid address given to
/// [`from`](EnvelopeBuilder::from) or [`to`](EnvelopeBuilder::to) is
/// reported by [`build`](EnvelopeBuilder::build).
///
/// ```
/// use smtp_client::{Envelope, Notify, Recipient, Ret};
/// let envelope = Envelope::builder()
///     .from("alice@example.com")
///     .to("bob@example.org")
///     .recipient(Recipient::new("carol@example.org")?.notify(Notify::On {
///         success: false,
///         failure: true,
///         delay: false,
///     }))
///     .ret(Ret::Headers)
///     .build()?;
/// assert_eq!(envelope.recipients().len(), 2);
/// # Ok::<(), smtp_client::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct EnvelopeBuilder {
    error: Option<Error>,
    from: Option<Address>,
    recipients: Vec<Recipient>,
    ret: Option<Ret>,
    envid: Option<String>,
    smtputf8: bool,
    requiretls: bool,
}

impl EnvelopeBuilder {
    /// The sender, an [`Address`] or a string. Without it the
    /// reverse-path is `<>`.
    pub fn from(mut self, from: impl TryInto<Address, Error: Into<Error>>) -> Self {
        match to_address(from) {
            Ok(address) => self.from = Some(address),
            Err(error) => self.fail(error),
        }
        self
    }

    /// Adds a recipient without DSN parameters: an [`Address`] or a string.
    pub fn to(mut self, to: impl TryInto<Address, Error: Into<Error>>) -> Self {
        match to_address(to) {
            Ok(address) => self.recipients.push(Recipient::from_address(address)),
            Err(error) => self.fail(error),
        }
        self
    }

    /// Keeps the first error for `build`.
    fn fail(&mut self, error: Error) {
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    /// Adds a recipient with its parameters.
    pub fn recipient(mut self, recipient: Recipient) -> Self {
        self.recipients.push(recipient);
        self
    }

    /// `RET=FULL` or `RET=HDRS` (RFC 3461 §4.3).
    pub fn ret(mut self, ret: Ret) -> Self {
        self.ret = Some(ret);
        self
    }

    /// `ENVID=` (RFC 3461 §4.4); xtext-encoded when written.
    pub fn envid(mut self, envid: impl Into<String>) -> Self {
        self.envid = Some(envid.into());
        self
    }

    /// Requests `SMTPUTF8` even when every address is ASCII (for a message
    /// whose header fields hold UTF-8, RFC 6532).
    pub fn smtputf8(mut self, smtputf8: bool) -> Self {
        self.smtputf8 = smtputf8;
        self
    }

    /// Requests `REQUIRETLS` (RFC 8689): the message must travel over TLS
    /// on every hop. The send fails unless the connection uses TLS and the
    /// server offers `REQUIRETLS`.
    pub fn requiretls(mut self, requiretls: bool) -> Self {
        self.requiretls = requiretls;
        self
    }

    /// Validates and builds the envelope.
    pub fn build(self) -> Result<Envelope, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let envelope = Envelope {
            from: self.from,
            recipients: self.recipients,
            ret: self.ret,
            envid: self.envid,
            smtputf8: self.smtputf8,
            requiretls: self.requiretls,
        };
        envelope.validate()?;
        Ok(envelope)
    }
}

/// What happened to one recipient.
///
/// Get every recipient's outcome, however the send ended, with
/// [`RecipientOutcomes::recipient_outcomes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// The recipient.
    pub address: Address,
    /// Whether the server took responsibility for delivering the message to
    /// this recipient.
    pub accepted: bool,
    /// The deciding reply: the rejection of `RCPT` (or of `MAIL` or `DATA`
    /// for its transaction), or the reply to the end of data (the
    /// recipient's own reply in LMTP). `None` when the connection failed
    /// before the server answered for this recipient.
    pub reply: Option<Reply>,
}

impl RecipientOutcome {
    /// The deciding reply, if any.
    pub fn reply(&self) -> Option<&Reply> {
        self.reply.as_ref()
    }

    /// Whether a recipient that did not accept the message may accept it
    /// later: its reply is a 4xx, or it has no reply at all (the connection
    /// failed before the server answered for it, so its fate is unknown and
    /// a later attempt decides it). False for an accepted recipient and for
    /// a 5xx.
    pub fn is_transient(&self) -> bool {
        !self.accepted && self.reply.as_ref().is_none_or(Reply::is_transient)
    }
}

/// One accessor for every recipient's fate, whichever way a send ended:
/// implemented for the `Result` a send returns, for [`SendResult`] (some
/// recipients accepted) and for [`Error`] (see [`Error::recipients`]).
///
/// ```
/// # async fn run(pool: smtp_client::Pool, envelope: smtp_client::Envelope) {
/// use smtp_client::RecipientOutcomes;
///
/// let result = pool.send(&envelope, "Subject: hi\r\n\r\nHello\r\n").await;
/// for outcome in result.recipient_outcomes() {
///     match (outcome.accepted, outcome.reply()) {
///         (true, _) => println!("{}: delivered", outcome.address),
///         (false, Some(reply)) => println!("{}: refused: {reply}", outcome.address),
///         (false, None) => println!("{}: not attempted", outcome.address),
///     }
/// }
/// # }
/// ```
pub trait RecipientOutcomes {
    /// One outcome per envelope recipient, in envelope order (empty only
    /// for an error that did not come from a send).
    fn recipient_outcomes(&self) -> &[RecipientOutcome];
}

impl RecipientOutcomes for SendResult {
    fn recipient_outcomes(&self) -> &[RecipientOutcome] {
        &self.recipients
    }
}

impl RecipientOutcomes for Error {
    fn recipient_outcomes(&self) -> &[RecipientOutcome] {
        self.recipients()
    }
}

impl RecipientOutcomes for Result<SendResult, Error> {
    fn recipient_outcomes(&self) -> &[RecipientOutcome] {
        match self {
            Ok(result) => result.recipient_outcomes(),
            Err(error) => error.recipient_outcomes(),
        }
    }
}

/// The result of a send in which at least one recipient accepted the
/// message. Rejected recipients are listed with the server's reply: a
/// partial acceptance is a success with rejections, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// One outcome per envelope recipient, in envelope order.
    pub recipients: Vec<RecipientOutcome>,
    /// The reply to the end of data of the last transaction that delivered
    /// (SMTP); `None` for LMTP, whose replies are per recipient.
    pub reply: Option<Reply>,
    /// How many transactions the send took: more than one when the server
    /// limited the recipients per message (`452`, RFC 5321 §4.5.3.1.10).
    pub transactions: usize,
    /// Whether the server that took the message offered `DSN` in its EHLO
    /// reply (RFC 3461 §3), so the envelope's DSN parameters (`NOTIFY`,
    /// `ORCPT`, `RET`, `ENVID`) went with it. A relay needs this to know who
    /// issues success notices: when true the next hop has them and the
    /// relay issues none (RFC 3461 §5.2.1); when false and `NOTIFY`
    /// includes `SUCCESS`, the relay reports the message `relayed`
    /// (§5.2.2). Always false for a server without ESMTP.
    pub dsn_offered: bool,
}

impl SendResult {
    /// The recipients that accepted the message.
    pub fn accepted(&self) -> impl Iterator<Item = &RecipientOutcome> {
        self.recipients.iter().filter(|outcome| outcome.accepted)
    }

    /// The recipients that did not.
    pub fn rejected(&self) -> impl Iterator<Item = &RecipientOutcome> {
        self.recipients.iter().filter(|outcome| !outcome.accepted)
    }

    /// Whether every recipient accepted the message.
    pub fn is_complete(&self) -> bool {
        self.recipients.iter().all(|outcome| outcome.accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn address(text: &str) -> Address {
        Address::parse(text, true).unwrap()
    }

    #[test]
    fn an_envelope_needs_a_recipient() {
        let error = Envelope::new(address("a@example.com"), Vec::<Address>::new()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn envid_and_orcpt_are_checked() {
        let to = address("b@example.com");
        for envid in ["a\r\nRCPT TO:<x@y>", "", &"x".repeat(101), "caf\u{e9}"] {
            let error = Envelope::builder()
                .to(to.clone())
                .envid(envid)
                .build()
                .unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{envid:?}");
        }
        assert!(
            Envelope::builder()
                .to(to.clone())
                .envid("id-1 2")
                .build()
                .is_ok()
        );
        for (addr_type, value) in [
            ("rfc822", "a\nb"),
            ("", "a@b"),
            ("rfc 822", "a@b"),
            ("rfc822", ""),
        ] {
            let error = Envelope::builder()
                .recipient(Recipient::from(to.clone()).orcpt(addr_type, value))
                .build()
                .unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput);
        }
        let envelope = Envelope::builder()
            .recipient(Recipient::from(to).orcpt("rfc822", "b@example.com"))
            .build()
            .unwrap();
        assert!(envelope.has_dsn_parameters());
    }

    #[test]
    fn strings_are_addresses_and_bad_ones_are_input_errors() {
        let envelope = Envelope::new(
            "alice@example.com",
            ["bob@example.org", "carol@example.org"],
        )
        .unwrap();
        assert_eq!(envelope.from().unwrap().as_str(), "alice@example.com");
        assert_eq!(envelope.recipients().len(), 2);
        let owned = String::from("dave@example.org");
        assert!(Envelope::new(address("a@example.com"), [&owned]).is_ok());
        assert!(Envelope::new("a@example.com", [owned]).is_ok());
        for (from, to) in [("not an address", "b@example.org"), ("a@example.com", "b@")] {
            let error = Envelope::new(from, [to]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{from} {to}");
        }
        let error = Envelope::builder()
            .from("a@example.com")
            .to("bad")
            .to("good@example.org")
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("invalid address"), "{error}");
        assert_eq!(
            Recipient::new("x").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn one_accessor_gives_every_fate() {
        let outcome = |accepted, reply: Option<Reply>| RecipientOutcome {
            address: address("a@example.com"),
            accepted,
            reply,
        };
        let ok: Result<SendResult, Error> = Ok(SendResult {
            recipients: vec![
                outcome(true, Some(Reply::plain(250, "ok"))),
                outcome(false, Some(Reply::plain(550, "no"))),
            ],
            reply: Some(Reply::plain(250, "ok")),
            transactions: 1,
            dsn_offered: false,
        });
        assert_eq!(ok.recipient_outcomes().len(), 2);
        let envelope = Envelope::new("a@example.com", ["b@example.com", "c@example.com"]).unwrap();
        let err: Result<SendResult, Error> =
            Err(Error::timeout(crate::Step::Connect).for_envelope(&envelope));
        let outcomes = err.recipient_outcomes();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|o| !o.accepted && o.is_transient()));
        assert!(!outcome(false, Some(Reply::plain(550, "no"))).is_transient());
        assert!(!outcome(true, Some(Reply::plain(250, "ok"))).is_transient());
    }

    #[test]
    fn utf8_addresses_need_smtputf8() {
        let ascii = Envelope::new(address("a@example.com"), [address("b@example.com")]).unwrap();
        assert!(!ascii.needs_smtputf8());
        let utf8 = Envelope::null_sender([address("j\u{f6}rg@example.com")]).unwrap();
        assert!(utf8.needs_smtputf8());
        let forced = Envelope::builder()
            .to(address("b@example.com"))
            .smtputf8(true)
            .build()
            .unwrap();
        assert!(forced.needs_smtputf8());
    }
}
