//! MX resolution per RFC 5321 §5.1.
