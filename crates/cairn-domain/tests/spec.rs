//! The concert's rules as given/when/then specifications, and proof that the
//! spec helpers fail loudly, with both sides shown, when a rule is wrong.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use cairn_core::ErrorCode;
use cairn_domain::{Aggregate, testing::Spec};
use common::{Concert, ConcertCommand, ConcertError, ConcertEvent, Status, book, booked};

fn planned(capacity: u32) -> ConcertEvent {
    ConcertEvent::ConcertPlanned { capacity }
}

#[test]
fn planning_a_concert_puts_it_on_sale() {
    let state = Spec::<Concert>::given_nothing()
        .when(ConcertCommand::Plan { capacity: 2 })
        .then([planned(2)]);
    assert_eq!(state.status, Status::OnSale);
    assert_eq!(state.capacity, 2);
}

#[test]
fn booking_takes_a_ticket() {
    let state = Spec::<Concert>::given([planned(2), booked("ada")])
        .when(book("bob"))
        .then([booked("bob")]);
    assert_eq!(state.holders, ["ada", "bob"]);
}

#[test]
fn booking_twice_changes_nothing() {
    Spec::<Concert>::given([planned(2), booked("ada")])
        .when(book("ada"))
        .then_nothing();
}

#[test]
fn a_pair_books_two_tickets_or_none() {
    Spec::<Concert>::given([planned(3), booked("ada")])
        .when(ConcertCommand::BookPair {
            first: "bob".into(),
            second: "cy".into(),
        })
        .then([booked("bob"), booked("cy")]);
    Spec::<Concert>::given([planned(2), booked("ada")])
        .when(ConcertCommand::BookPair {
            first: "bob".into(),
            second: "cy".into(),
        })
        .then_error(|e| matches!(e, ConcertError::SoldOut { capacity: 2 }));
}

#[test]
fn a_full_concert_is_sold_out() {
    let error = Spec::<Concert>::given([planned(1), booked("ada")])
        .when(book("bob"))
        .then_error(|e| matches!(e, ConcertError::SoldOut { .. }));
    assert_eq!(error.to_string(), "sold out: all 1 tickets are booked");
}

#[test]
fn an_unplanned_concert_is_not_found() {
    Spec::<Concert>::given_nothing()
        .when(book("ada"))
        .then_error_code(ErrorCode::NotFound);
}

#[test]
fn a_cancelled_concert_sells_nothing() {
    Spec::<Concert>::given([planned(5), ConcertEvent::ConcertCancelled])
        .when(book("ada"))
        .then_error(|e| *e == ConcertError::Cancelled);
}

#[test]
fn a_concert_without_seats_is_refused() {
    Spec::<Concert>::given_nothing()
        .when(ConcertCommand::Plan { capacity: 0 })
        .then_error_code(ErrorCode::ValidationFailed);
}

#[test]
fn the_history_folds_into_the_state() {
    let spec = Spec::<Concert>::given([planned(3), booked("ada"), booked("bob")]);
    assert_eq!(spec.state().holders, ["ada", "bob"]);
    assert_eq!(
        spec.state(),
        Concert::from_events(&[planned(3), booked("ada"), booked("bob")])
    );
    let decided = spec.when(book("cy")).into_result().unwrap();
    assert_eq!(decided.len(), 1);
}

// --- the helpers fail when the rule does not hold ---------------------------

#[test]
#[should_panic(expected = "actual events")]
fn then_fails_on_other_events() {
    Spec::<Concert>::given([planned(2)])
        .when(book("ada"))
        .then([booked("bob")]);
}

#[test]
#[should_panic(expected = "actual events")]
fn then_fails_on_missing_events() {
    Spec::<Concert>::given([planned(2)])
        .when(book("ada"))
        .then([booked("ada"), booked("ada")]);
}

#[test]
#[should_panic(expected = "but the command was refused: sold out")]
fn then_fails_when_the_command_is_refused() {
    Spec::<Concert>::given([planned(1), booked("ada")])
        .when(book("bob"))
        .then([booked("bob")]);
}

#[test]
#[should_panic(expected = "expected the command to be refused")]
fn then_error_fails_when_the_command_is_accepted() {
    Spec::<Concert>::given([planned(2)])
        .when(book("ada"))
        .then_error(|_| true);
}

#[test]
#[should_panic(expected = "not with the expected error")]
fn then_error_fails_on_another_error() {
    Spec::<Concert>::given([planned(5), ConcertEvent::ConcertCancelled])
        .when(book("ada"))
        .then_error(|e| matches!(e, ConcertError::SoldOut { .. }));
}

#[test]
#[should_panic(expected = "whose code is not_found instead of rule_violation")]
fn then_error_code_fails_on_another_code() {
    Spec::<Concert>::given_nothing()
        .when(book("ada"))
        .then_error_code(ErrorCode::RuleViolation);
}

#[test]
#[should_panic(expected = "actual events")]
fn then_nothing_fails_when_events_are_decided() {
    Spec::<Concert>::given([planned(2)])
        .when(book("ada"))
        .then_nothing();
}

#[test]
fn a_mismatch_shows_history_expected_and_actual_as_json() {
    let panic = catch_unwind(AssertUnwindSafe(|| {
        Spec::<Concert>::given([planned(2)])
            .when(book("ada"))
            .then([booked("bob")]);
    }))
    .expect_err("the spec must fail");
    let message = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    // Key order inside the JSON depends on serde_json's features, so check
    // the parts rather than one exact string.
    let given = message.find("given:\n  0: ").expect("history shown");
    let expected = message
        .find("expected events:\n  0: ")
        .expect("expected shown");
    let actual = message.find("actual events:\n  0: ").expect("actual shown");
    assert!(given < expected && expected < actual, "{message}");
    assert!(
        message[given..expected].contains(r#""capacity":2"#),
        "{message}"
    );
    assert!(
        message[expected..actual].contains(r#""holder":"bob""#),
        "{message}"
    );
    assert!(message[actual..].contains(r#""holder":"ada""#), "{message}");
    assert!(
        message[actual..].contains(r#""type":"TicketBooked""#),
        "{message}"
    );
}
