//! Frames on streams: a length prefix and an enveloped message.

use super::*;

pub(super) fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello => "Hello",
        Message::Welcome => "Welcome",
        Message::Gossip(_) => "Gossip",
        Message::Write { .. } => "Write",
        Message::WriteAck { .. } => "WriteAck",
        Message::Read { .. } => "Read",
        Message::ReadReply { .. } => "ReadReply",
        Message::ReadDigest { .. } => "ReadDigest",
        Message::DigestReply { .. } => "DigestReply",
        Message::Merge { .. } => "Merge",
        Message::Handoff { .. } => "Handoff",
        Message::HandoffAck { .. } => "HandoffAck",
        Message::HintReplay { .. } => "HintReplay",
        Message::HintAck { .. } => "HintAck",
        Message::DigestRoots { .. } => "DigestRoots",
        Message::DigestBuckets { .. } => "DigestBuckets",
        Message::DigestKeys { .. } => "DigestKeys",
        Message::FetchKeys { .. } => "FetchKeys",
        Message::ClockProbe { .. } => "ClockProbe",
        Message::ClockReply { .. } => "ClockReply",
        Message::StampRefused { .. } => "StampRefused",
        Message::Prepare { .. } => "Prepare",
        Message::Promise { .. } => "Promise",
        Message::Propose { .. } => "Propose",
        Message::Accepted { .. } => "Accepted",
        Message::Rejected { .. } => "Rejected",
        Message::Moving { .. } => "Moving",
        Message::Commit { .. } => "Commit",
        Message::Committed { .. } => "Committed",
        Message::ListKeys { .. } => "ListKeys",
        Message::Keys { .. } => "Keys",
        Message::SyncAcceptors { .. } => "SyncAcceptors",
        Message::AcceptorStates { .. } => "AcceptorStates",
        Message::Clear { .. } => "Clear",
        Message::ClearAck { .. } => "ClearAck",
        Message::Clears { .. } => "Clears",
        Message::ForgetEvicted { .. } => "ForgetEvicted",
    }
}

pub(super) async fn write_frame(
    codec: &Codec,
    send: &mut quinn::SendStream,
    message: &Message,
) -> Result<(), String> {
    let mut frame = Vec::new();
    codec
        .encode_frame(message, &mut frame)
        .map_err(|e| e.to_string())?;
    send.write_all(&frame)
        .await
        .map_err(|e| format!("write failed: {e}"))
}

#[derive(Debug)]
pub(super) enum FrameError {
    Decode(DecodeError),
    Stream(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Decode(e) => e.fmt(f),
            FrameError::Stream(e) => f.write_str(e),
        }
    }
}

impl From<FrameError> for String {
    fn from(e: FrameError) -> String {
        e.to_string()
    }
}

/// Reads exactly one frame; the length is checked before the body is allocated.
pub(super) async fn read_frame(
    codec: &Codec,
    recv: &mut quinn::RecvStream,
) -> Result<Message, FrameError> {
    let stream_error = |e: quinn::ReadExactError| match e {
        quinn::ReadExactError::FinishedEarly(0) => {
            FrameError::Stream("the stream ended before a frame".into())
        }
        quinn::ReadExactError::FinishedEarly(_) => FrameError::Decode(DecodeError::Truncated),
        quinn::ReadExactError::ReadError(e) => FrameError::Stream(e.to_string()),
    };
    let mut prefix = [0; sessmesh_core::wire::FRAME_PREFIX_LEN];
    recv.read_exact(&mut prefix).await.map_err(stream_error)?;
    let len = codec.frame_len(prefix).map_err(FrameError::Decode)?;
    let mut body = vec![0; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| match stream_error(e) {
            FrameError::Stream(s) if s.contains("ended before") => {
                FrameError::Decode(DecodeError::Truncated)
            }
            other => other,
        })?;
    codec.decode(&body).map_err(FrameError::Decode)
}
