//! TODO module command
