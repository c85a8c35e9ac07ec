//! Delivery status notifications (RFC 3464, RFC 6533).
