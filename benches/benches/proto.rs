//! smtp-proto micro-benchmarks, each measured side by side with Stalwart
//! Labs' `smtp-proto` 0.2 on the same input, so results read as ratios on a
//! noisy machine. Run with `cargo xtask bench` (see docs/benchmarks.md).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smtp_proto::body::{BodyEvent, DataDecoder, DataEncoder};
use smtp_proto::codec::{ClientCodec, ServerCodec, ServerFrame};
use tokio_util::codec::Decoder;

/// One pipelined transaction with ESMTP parameters, as a busy MX sees it.
fn transaction(recipients: usize) -> Vec<u8> {
    let mut input = Vec::new();
    input.extend_from_slice(b"EHLO client.example.org\r\n");
    input.extend_from_slice(
        b"MAIL FROM:<sender.name+tag@example.org> SIZE=123456 BODY=8BITMIME RET=HDRS ENVID=QQ314159\r\n",
    );
    for index in 0..recipients {
        input.extend_from_slice(
            format!("RCPT TO:<recipient{index}@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;recipient{index}@example.net\r\n")
                .as_bytes(),
        );
    }
    input.extend_from_slice(b"NOOP\r\nRSET\r\n");
    input
}

/// A message of about `size` octets with 78-octet lines, a tenth of them
/// starting with a dot, already dot-stuffed and terminated.
fn stuffed_body(size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size + 100);
    let mut line = 0usize;
    while body.len() < size {
        if line.is_multiple_of(10) {
            body.extend_from_slice(b"..");
        }
        body.extend_from_slice(&[b'x'; 76]);
        body.extend_from_slice(b"\r\n");
        line += 1;
    }
    body.extend_from_slice(b".\r\n");
    body
}

fn commands(c: &mut Criterion) {
    let input = transaction(50);
    let mut group = c.benchmark_group("commands/pipelined-transaction");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("ferry", |b| {
        b.iter(|| {
            let mut codec = ServerCodec::new(2048);
            let mut buffer = BytesMut::from(&input[..]);
            let mut count = 0;
            while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                assert!(matches!(frame, ServerFrame::Command(Ok(_))));
                count += 1;
            }
            black_box(count)
        })
    });
    group.bench_function("stalwart", |b| {
        b.iter(|| {
            let mut receiver = stalwart_smtp_proto::request::receiver::RequestReceiver::default();
            let mut bytes = input.iter();
            let mut count = 0;
            loop {
                match receiver.ingest(&mut bytes) {
                    Ok(request) => {
                        black_box(&request);
                        count += 1;
                    }
                    Err(stalwart_smtp_proto::Error::NeedsMoreData { .. }) => break,
                    Err(error) => panic!("{error:?}"),
                }
            }
            black_box(count)
        })
    });
    group.finish();
}

fn data_decoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("data/decode");
    for size in [10 * 1024, 1024 * 1024] {
        let input = stuffed_body(size);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("ferry", size), &input, |b, input| {
            b.iter(|| {
                let mut decoder = DataDecoder::new(u64::MAX);
                let mut buffer = BytesMut::from(&input[..]);
                let mut total = 0;
                while let Some(event) = decoder.decode(&mut buffer) {
                    match event {
                        BodyEvent::Chunk(chunk) => total += chunk.len(),
                        BodyEvent::End(_) => break,
                    }
                }
                black_box(total)
            })
        });
        group.bench_with_input(BenchmarkId::new("stalwart", size), &input, |b, input| {
            b.iter(|| {
                let mut receiver = stalwart_smtp_proto::request::receiver::DataReceiver::new();
                let mut out = Vec::with_capacity(input.len());
                let done = receiver.ingest(&mut input.iter(), &mut out);
                assert!(done);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn data_encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("data/encode");
    let mut message = Vec::new();
    for line in 0..13_000u32 {
        if line.is_multiple_of(10) {
            message.push(b'.');
        }
        message.extend_from_slice(&[b'y'; 76]);
        message.push(b'\n');
    }
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("ferry/1MiB-lf-lines-64KiB-chunks", |b| {
        b.iter(|| {
            let mut encoder = DataEncoder::new();
            let mut out = BytesMut::with_capacity(message.len() + message.len() / 20);
            for chunk in message.chunks(64 * 1024) {
                encoder.encode(chunk, &mut out);
            }
            encoder.finish(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn replies(c: &mut Criterion) {
    let ehlo = b"250-mx.example.net at your service\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n\
250-PIPELINING\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n\
250-AUTH PLAIN LOGIN\r\n250-DSN\r\n250 STARTTLS\r\n";
    let mut group = c.benchmark_group("replies/ehlo");
    group.throughput(Throughput::Bytes(ehlo.len() as u64));
    group.bench_function("ferry", |b| {
        b.iter(|| {
            let mut codec = ClientCodec::new();
            let mut buffer = BytesMut::from(&ehlo[..]);
            let reply = codec.decode(&mut buffer).unwrap().unwrap();
            black_box(smtp_proto::ehlo::Capabilities::from_reply(&reply))
        })
    });
    group.bench_function("stalwart", |b| {
        b.iter(|| {
            let response = stalwart_smtp_proto::EhloResponse::parse(&mut ehlo.iter()).unwrap();
            black_box(response)
        })
    });
    group.finish();
}

criterion_group!(benches, commands, data_decoding, data_encoding, replies);
criterion_main!(benches);
