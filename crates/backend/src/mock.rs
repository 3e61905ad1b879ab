//! The mock backend (being written).
