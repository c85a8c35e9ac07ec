//! smtp-proto micro-benchmarks, each measured side by side with Stalwart
//! Labs' `smtp-proto` 0.2 on the same input, so results read as ratios on a
//! noisy machine. Run with `cargo xtask bench` (see docs/benchmarks.md).
//! The routines live in the crate's library, shared with `proto-count`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_benches as cases;

fn commands(c: &mut Criterion) {
    let input = cases::transaction(50);
    let mut group = c.benchmark_group("commands/pipelined-transaction");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("ferry", |b| {
        b.iter(|| black_box(cases::ferry_commands(&input)))
    });
    group.bench_function("ferry-owned", |b| {
        b.iter(|| black_box(cases::ferry_commands_owned(&input)))
    });
    group.bench_function("stalwart", |b| {
        b.iter(|| black_box(cases::stalwart_commands(&input)))
    });
    group.finish();
}

fn data_decoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("data/decode");
    for size in [10 * 1024, 1024 * 1024] {
        let input = cases::stuffed_body(size);
        group.throughput(Throughput::Bytes(input.len() as u64));
        // The decoder alone: the buffer it reads from is filled before each
        // iteration, outside the timing (Stalwart's side starts from the
        // input slice and copies it into its output inside the timing).
        group.bench_with_input(BenchmarkId::new("ferry", size), &input, |b, input| {
            b.iter_batched(
                || BytesMut::from(&input[..]),
                |buffer| black_box(cases::ferry_decode_buffer(buffer)),
                BatchSize::PerIteration,
            )
        });
        // The same with the copy into the buffer, as earlier rounds measured.
        group.bench_with_input(
            BenchmarkId::new("ferry-with-copy", size),
            &input,
            |b, input| b.iter(|| black_box(cases::ferry_decode(input))),
        );
        group.bench_with_input(BenchmarkId::new("stalwart", size), &input, |b, input| {
            b.iter(|| black_box(cases::stalwart_decode(input)))
        });
    }
    group.finish();
}

fn data_encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("data/encode");
    let message = cases::lf_message();
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("ferry/1MiB-lf-lines-64KiB-chunks", |b| {
        b.iter(|| black_box(cases::ferry_encode(&message)))
    });
    group.finish();
}

fn replies(c: &mut Criterion) {
    let mut group = c.benchmark_group("replies/ehlo");
    group.throughput(Throughput::Bytes(cases::EHLO_REPLY.len() as u64));
    group.bench_function("ferry", |b| {
        b.iter(|| black_box(cases::ferry_ehlo(cases::EHLO_REPLY)))
    });
    group.bench_function("ferry-owned", |b| {
        b.iter(|| black_box(cases::ferry_ehlo_owned(cases::EHLO_REPLY)))
    });
    group.bench_function("stalwart", |b| {
        b.iter(|| black_box(cases::stalwart_ehlo(cases::EHLO_REPLY)))
    });
    group.finish();
}

criterion_group!(benches, commands, data_decoding, data_encoding, replies);
criterion_main!(benches);
