fn assert_send<T: Send>() {}
#[test]
fn vm_send() {
    assert_send::<msb_krun::Vm>();
}
