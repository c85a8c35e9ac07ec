//! TODO module xtext
