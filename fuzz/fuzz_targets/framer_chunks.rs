//! Fuzz target 1: the framer on arbitrary bytes and arbitrary chunking.
//!
//! Property (DESIGN §4): the framer accepts any chunking, so the events and
//! the final error are the same whether the input comes in one read, in
//! reads whose lengths the input chooses, or one byte at a time; and a
//! framer after `reset` behaves like a new one. No panic anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sj::framer::{canonical_record, Framer};
use sj_fuzz::{frame, run_framer, Case};

fuzz_target!(|data: &[u8]| {
    let Some(case) = Case::decode(data) else {
        return;
    };
    let whole = frame(case.mode, case.limits, &[case.payload], 1);
    let chunks = case.chunks();
    let split = frame(case.mode, case.limits, &chunks, case.drain_every);
    assert_eq!(
        split,
        whole,
        "chunking changed the outcome (chunks {:?})",
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
    );
    if case.payload.len() <= 2048 {
        let bytes: Vec<&[u8]> = case.payload.chunks(1).collect();
        assert_eq!(
            frame(case.mode, case.limits, &bytes, 1),
            whole,
            "one-byte reads changed the outcome"
        );
    }
    // A stream restart in the middle of anything: reset forgets it all.
    let mut f = Framer::new(case.mode, case.limits);
    let _ = run_framer(&mut f, &chunks[..chunks.len() / 2], 1);
    f.reset();
    assert_eq!(
        run_framer(&mut f, &[case.payload], 1),
        whole,
        "reset did not give a fresh framer"
    );
    // The FIFO path: one line, one record or a clear error.
    let _ = canonical_record(case.payload, case.limits);
});
