//! TODO module codec
