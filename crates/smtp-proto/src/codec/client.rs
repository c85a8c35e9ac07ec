//! Client side: reads replies, writes commands and body bytes.
