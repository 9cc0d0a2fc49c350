//! The bulk encoding of byte values (`compat/bulk.rs`) stands on the
//! engine's own encoding of a `BytesValue`: a `u64` length, little-endian,
//! then the bytes. This fails once the engine encodes it otherwise.

use bb_runtime::slot_value::SlotValue;
use bb_runtime::syscall::values::BytesValue;

#[test]
fn upstream_bytes_values_still_encode_as_length_and_bytes() {
    for len in [0usize, 1, 65_536, 1 << 20] {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let engine = BytesValue(bytes.clone()).to_wire_bytes().unwrap();
        let layout = [(len as u64).to_le_bytes().to_vec(), bytes.clone()].concat();
        assert!(
            engine == layout,
            "the engine encodes a {len}-byte BytesValue otherwise"
        );
        // What this crate writes in bulk, the engine reads.
        let value = bb_libp2p::values::bytes(&bytes);
        assert_eq!(bincode::deserialize::<BytesValue>(&value).unwrap().0, bytes);
        assert_eq!(bb_libp2p::values::decode_bytes(&engine).unwrap(), bytes);
    }
}
