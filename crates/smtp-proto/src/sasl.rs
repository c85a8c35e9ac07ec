//! TODO module sasl
