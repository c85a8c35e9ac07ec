//! Runs one benchmark routine a given number of times, for instruction
//! counts: `valgrind --tool=callgrind proto-count ehlo/ferry 1000` and the
//! same with 2000; the difference over 1000 is the cost of one iteration,
//! whatever else the machine is doing. See `docs/benchmarks.md`.

use std::hint::black_box;
use std::process::ExitCode;

use ferry_benches as cases;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(case), Some(count)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        eprintln!(
            "usage: proto-count CASE COUNT (CASE: commands/ferry, commands/stalwart, decode-10k/ferry, decode-1m/ferry, ehlo/ferry, ... )"
        );
        return ExitCode::FAILURE;
    };
    let transaction = cases::transaction(50);
    let small = cases::stuffed_body(10 * 1024);
    let large = cases::stuffed_body(1024 * 1024);
    let message = cases::lf_message();
    let mut out = bytes::BytesMut::with_capacity(256);
    for _ in 0..count {
        match case.as_str() {
            "commands/ferry" => {
                black_box(cases::ferry_commands(black_box(&transaction)));
            }
            "commands-owned/ferry" => {
                black_box(cases::ferry_commands_owned(black_box(&transaction)));
            }
            "commands/stalwart" => {
                black_box(cases::stalwart_commands(black_box(&transaction)));
            }
            "decode-10k/ferry" => {
                black_box(cases::ferry_decode(black_box(&small)));
            }
            "decode-10k/stalwart" => {
                black_box(cases::stalwart_decode(black_box(&small)));
            }
            "decode-1m/ferry" => {
                black_box(cases::ferry_decode(black_box(&large)));
            }
            "decode-1m/stalwart" => {
                black_box(cases::stalwart_decode(black_box(&large)));
            }
            "encode/ferry" => {
                black_box(cases::ferry_encode(black_box(&message)));
            }
            "ehlo-via-reply/ferry" => {
                black_box(cases::ferry_ehlo_via_reply(black_box(cases::EHLO_REPLY)));
            }
            "reply-encode/ferry" => {
                black_box(cases::ferry_reply_encode(black_box(&mut out)));
            }
            "ehlo-owned/ferry" => {
                black_box(cases::ferry_ehlo_owned(black_box(cases::EHLO_REPLY)));
            }
            "ehlo/ferry" => {
                black_box(cases::ferry_ehlo(black_box(cases::EHLO_REPLY)));
            }
            "ehlo/stalwart" => {
                black_box(cases::stalwart_ehlo(black_box(cases::EHLO_REPLY)));
            }
            other => {
                eprintln!("unknown case {other}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
