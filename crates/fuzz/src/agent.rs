//! stub
/// x
pub fn fuzz(_data: &[u8]) {}
/// x
pub fn prepare_process() {}
