//! The acknowledgement: what a receiver answers for each envelope, and what
//! the sender reads from it. One table maps the wire's reasons to
//! [`RejectKind`]s both ways.

use crate::codec::proto::{Reason, Status};
use crate::codec::{Ack, MAX_DETAIL_BYTES};
use crate::event::{RejectKind, Rejection, SendFailure};

/// Each rejection kind and the reason that carries it on the wire. Kinds
/// without a reason of their own (a broken stream, an unknown reason) go as
/// `Reason::None` and read back as [`RejectKind::Unknown`].
const REASONS: [(RejectKind, Reason); 13] = [
    (RejectKind::LengthPrefix, Reason::LengthPrefix),
    (RejectKind::Oversize, Reason::Oversize),
    (RejectKind::Truncated, Reason::Truncated),
    (RejectKind::Malformed, Reason::Malformed),
    (RejectKind::CapsExceeded, Reason::CapsExceeded),
    (RejectKind::Busy, Reason::Busy),
    (RejectKind::Denied, Reason::Denied),
    (RejectKind::NoReceiver, Reason::NoReceiver),
    (RejectKind::Expired, Reason::Expired),
    (RejectKind::Timeout, Reason::Timeout),
    (RejectKind::UnknownTransfer, Reason::UnknownTransfer),
    (RejectKind::ChunkRange, Reason::ChunkRange),
    (RejectKind::Integrity, Reason::Integrity),
];

/// The acknowledgement of an envelope the engine took.
pub(crate) fn accepted() -> Ack {
    Ack {
        status: Status::Accepted as i32,
        ..Default::default()
    }
}

/// The acknowledgement for a refusal, its detail cut to what the wire
/// carries.
pub(crate) fn rejected(rejection: &Rejection) -> Ack {
    let reason = REASONS
        .iter()
        .find(|(kind, _)| *kind == rejection.kind)
        .map_or(Reason::None, |(_, reason)| *reason);
    let mut detail = rejection.detail.clone();
    if detail.len() > MAX_DETAIL_BYTES {
        let mut end = MAX_DETAIL_BYTES;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    Ack {
        status: Status::Rejected as i32,
        reason: reason as i32,
        detail,
    }
}

/// What an acknowledgement says about the envelope.
pub(crate) fn verdict(ack: &Ack) -> Result<(), SendFailure> {
    match Status::try_from(ack.status) {
        Ok(Status::Accepted) => Ok(()),
        Ok(Status::Rejected) => {
            let reason = Reason::try_from(ack.reason).unwrap_or(Reason::None);
            let kind = REASONS
                .iter()
                .find(|(_, r)| *r == reason)
                .map_or(RejectKind::Unknown, |(kind, _)| *kind);
            Err(SendFailure::Rejected(Rejection::new(
                kind,
                ack.detail.clone(),
            )))
        }
        Ok(Status::Unspecified) | Err(_) => Err(SendFailure::Io(format!(
            "acknowledgement with unknown status {}",
            ack.status
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_with_a_reason_reads_back_as_itself() {
        for (kind, _) in REASONS {
            let ack = rejected(&Rejection::new(kind, "x".into()));
            match verdict(&ack) {
                Err(SendFailure::Rejected(r)) => assert_eq!(r.kind, kind),
                other => panic!("{kind:?} read back as {other:?}"),
            }
        }
        assert_eq!(verdict(&accepted()), Ok(()));
        let stream = rejected(&Rejection::new(RejectKind::Stream, "x".into()));
        assert!(matches!(
            verdict(&stream),
            Err(SendFailure::Rejected(Rejection {
                kind: RejectKind::Unknown,
                ..
            }))
        ));
    }
}
