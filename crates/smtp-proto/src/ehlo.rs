//! TODO module ehlo
