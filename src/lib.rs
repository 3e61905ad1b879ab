//! alcove
