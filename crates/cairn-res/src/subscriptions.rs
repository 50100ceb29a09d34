//! What one connection holds: its direct subscriptions (counted), the
//! resources they reach through hard references (indirect), and the limit
//! on how many resources it may hold.
//!
//! A resource is held while a direct subscription reaches it; references
//! between resources that no direct subscription reaches (a cycle left
//! behind) hold nothing. Fetching is the caller's: the bookkeeping asks
//! for each resource it does not hold yet, once, and reports what became
//! held (the resource set to send) and what stopped being held (whose
//! events stop).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    future::Future,
    sync::Arc,
};

use crate::{Event, ResError, Resource, ResourceSet, Rid, Value};

/// The default number of resources one connection may hold.
pub const DEFAULT_LIMIT: usize = 1024;

/// A resource a connection holds.
#[derive(Debug, Clone)]
struct Held {
    references: Vec<Rid>,
    /// What the client was last sent (`None` for an error); shared with
    /// whoever else read the same (other connections, a cache).
    resource: Option<Arc<Resource>>,
}

/// One connection's subscriptions.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    direct: HashMap<Rid, u64>,
    /// Every held resource, as last sent, with its hard references.
    held: HashMap<Rid, Held>,
    limit: usize,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self::with_limit(DEFAULT_LIMIT)
    }
}

impl Subscriptions {
    /// At most `limit` resources held at once.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            direct: HashMap::new(),
            held: HashMap::new(),
            limit,
        }
    }

    /// Whether events on `rid` go to this connection.
    pub fn holds(&self, rid: &Rid) -> bool {
        self.held.contains_key(rid)
    }

    /// How many resources it holds.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The direct subscriptions on `rid`.
    pub fn direct(&self, rid: &Rid) -> u64 {
        self.direct.get(rid).copied().unwrap_or(0)
    }

    /// The resources held directly, each once.
    pub fn directly_held(&self) -> Vec<Rid> {
        let mut rids: Vec<Rid> = self.direct.keys().cloned().collect();
        rids.sort();
        rids
    }

    /// Subscribes to `rid` directly: fetches it and what it references that
    /// is not held yet, and answers those as a resource set. If `rid`
    /// itself cannot be had, or holding it would pass the limit, nothing
    /// changes and that is the error; a reference that cannot be had is an
    /// error in the set, as the protocol says.
    pub async fn subscribe<F, Fut, R>(
        &mut self,
        rid: &Rid,
        fetch: F,
    ) -> Result<ResourceSet, ResError>
    where
        F: FnMut(Rid) -> Fut,
        Fut: Future<Output = Result<R, ResError>>,
        R: Into<Arc<Resource>>,
    {
        let set = self.reach(rid, fetch).await?;
        *self.direct.entry(rid.clone()).or_insert(0) += 1;
        Ok(set)
    }

    /// Fetches `rid` without subscribing (a `get`): the resource and what it
    /// references, whether held or not.
    pub async fn get<F, Fut, R>(rid: &Rid, limit: usize, fetch: F) -> Result<ResourceSet, ResError>
    where
        F: FnMut(Rid) -> Fut,
        Fut: Future<Output = Result<R, ResError>>,
        R: Into<Arc<Resource>>,
    {
        Self::with_limit(limit).reach(rid, fetch).await
    }

    /// Drops `count` direct subscriptions on `rid`; answers the resources no
    /// longer held. `system.noSubscription`, and no change, when there are
    /// fewer than `count`.
    pub fn unsubscribe(&mut self, rid: &Rid, count: u64) -> Result<Vec<Rid>, ResError> {
        let have = self.direct(rid);
        if count == 0 || have < count {
            return Err(ResError::no_subscription());
        }
        if have == count {
            self.direct.remove(rid);
        } else {
            self.direct.insert(rid.clone(), have - count);
        }
        Ok(self.collect())
    }

    /// Ends every direct subscription on `rid` (access to it was taken
    /// away); answers the resources no longer held.
    pub fn revoke(&mut self, rid: &Rid) -> Vec<Rid> {
        self.direct.remove(rid);
        self.collect()
    }

    /// A held resource changed: its hard references are now `references`.
    /// Fetches what they reach that is not held yet (the set the change
    /// event carries) and answers it with the resources no longer held.
    pub async fn rereference<F, Fut, R>(
        &mut self,
        rid: &Rid,
        references: Vec<Rid>,
        mut fetch: F,
    ) -> (ResourceSet, Vec<Rid>)
    where
        F: FnMut(Rid) -> Fut,
        Fut: Future<Output = Result<R, ResError>>,
        R: Into<Arc<Resource>>,
    {
        if !self.holds(rid) {
            return (ResourceSet::default(), Vec::new());
        }
        let mut set = ResourceSet::default();
        for reference in &references {
            // A reference past the limit is an error in the set; the rest
            // of the change still applies.
            if let Err(error) = self.reach_into(reference, &mut fetch, &mut set).await {
                set.insert_error(reference, error);
            }
        }
        let Some(held) = self.held.get_mut(rid) else {
            return (set, Vec::new());
        };
        if held.references == references {
            // The same references: nothing can have stopped being held.
            return (set, Vec::new());
        }
        held.references = references;
        let dropped = self.collect();
        (set, dropped)
    }

    /// What the client holds of `rid`, as last sent.
    pub fn resource(&self, rid: &Rid) -> Option<&Resource> {
        self.held.get(rid).and_then(|h| h.resource.as_deref())
    }

    /// [`resource`](Self::resource), shared.
    pub fn resource_shared(&self, rid: &Rid) -> Option<Arc<Resource>> {
        self.held.get(rid).and_then(|h| h.resource.clone())
    }

    /// The held resources named `name`, whatever their query; `name` may
    /// be a pattern ([`crate::name_matches`]).
    pub fn held_named(&self, name: &str) -> Vec<Rid> {
        let mut rids: Vec<Rid> = self
            .held
            .keys()
            .filter(|r| crate::name_matches(name, r.name()))
            .cloned()
            .collect();
        rids.sort();
        rids
    }

    /// `event` happened to a held resource: it is applied to what the
    /// client holds (`change` to a model, `add` and `remove` to a
    /// collection), what a new value references and is not held yet is
    /// fetched (the set the event carries), and what is no longer reached
    /// is answered. An event that does not apply (another kind, an index
    /// out of range, a resource not held) changes nothing.
    pub async fn apply<F, Fut, R>(&mut self, event: &Event, fetch: F) -> (ResourceSet, Vec<Rid>)
    where
        F: FnMut(Rid) -> Fut,
        Fut: Future<Output = Result<R, ResError>>,
        R: Into<Arc<Resource>>,
    {
        let Some(mut resource) = self.resource(&event.rid).cloned() else {
            return (ResourceSet::default(), Vec::new());
        };
        let data = event.data.clone().unwrap_or_default();
        let applied = match (&mut resource, event.name.as_str()) {
            (Resource::Model(model), "change") => match data.get("values") {
                Some(serde_json::Value::Object(values)) => {
                    for (key, value) in values {
                        if value == &serde_json::json!({ "action": "delete" }) {
                            model.remove(key);
                        } else if let Ok(value) = Value::parse(value.clone()) {
                            model.insert(key.clone(), value);
                        }
                    }
                    true
                }
                _ => false,
            },
            (Resource::Collection(values), "add") => {
                let idx = data["idx"].as_u64().and_then(|i| usize::try_from(i).ok());
                match (idx, Value::parse(data["value"].clone())) {
                    (Some(idx), Ok(value)) if idx <= values.len() => {
                        values.insert(idx, value);
                        true
                    }
                    _ => false,
                }
            }
            (Resource::Collection(values), "remove") => {
                match data["idx"].as_u64().and_then(|i| usize::try_from(i).ok()) {
                    Some(idx) if idx < values.len() => {
                        values.remove(idx);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !applied {
            return (ResourceSet::default(), Vec::new());
        }
        self.replace(&event.rid, resource, fetch).await
    }

    /// A held resource now reads as `resource`: it is kept as sent, what
    /// it references that is not held yet is fetched (the set to send with
    /// the events), and what is no longer reached is answered.
    pub async fn replace<F, Fut, R>(
        &mut self,
        rid: &Rid,
        resource: impl Into<Arc<Resource>>,
        fetch: F,
    ) -> (ResourceSet, Vec<Rid>)
    where
        F: FnMut(Rid) -> Fut,
        Fut: Future<Output = Result<R, ResError>>,
        R: Into<Arc<Resource>>,
    {
        if !self.holds(rid) {
            return (ResourceSet::default(), Vec::new());
        }
        let resource = resource.into();
        let references = ResourceSet::references(&resource);
        if let Some(held) = self.held.get_mut(rid) {
            held.resource = Some(resource);
        }
        self.rereference(rid, references, fetch).await
    }

    /// Fetches `rid` and everything it reaches that is not held, holding
    /// them; undoes it all when `rid` itself fails.
    async fn reach<F, Fut, R>(&mut self, rid: &Rid, mut fetch: F) -> Result<ResourceSet, ResError>
    where
        F: FnMut(Rid) -> Fut,
        Fut: Future<Output = Result<R, ResError>>,
        R: Into<Arc<Resource>>,
    {
        let mut set = ResourceSet::default();
        if self.holds(rid) {
            return Ok(set);
        }
        let before: HashSet<Rid> = self.held.keys().cloned().collect();
        match self.reach_into(rid, &mut fetch, &mut set).await {
            Ok(()) => Ok(set),
            Err(error) => {
                self.held.retain(|r, _| before.contains(r));
                Err(error)
            }
        }
    }

    async fn reach_into<F, Fut, R>(
        &mut self,
        root: &Rid,
        fetch: &mut F,
        set: &mut ResourceSet,
    ) -> Result<(), ResError>
    where
        F: FnMut(Rid) -> Fut,
        Fut: Future<Output = Result<R, ResError>>,
        R: Into<Arc<Resource>>,
    {
        let mut queue = vec![root.clone()];
        while let Some(rid) = queue.pop() {
            if self.held.contains_key(&rid) {
                continue;
            }
            if self.held.len() >= self.limit {
                return Err(ResError::new(
                    "cairn.subscription_limit",
                    format!("a connection holds at most {} resources", self.limit),
                ));
            }
            match fetch(rid.clone()).await {
                Ok(resource) => {
                    let resource = resource.into();
                    let references = ResourceSet::references(&resource);
                    queue.extend(references.iter().cloned());
                    set.insert(&rid, Resource::clone(&resource));
                    self.held.insert(
                        rid.clone(),
                        Held {
                            references,
                            resource: Some(resource),
                        },
                    );
                }
                Err(error) if &rid == root => return Err(error),
                Err(error) => {
                    // Held as an error: the client knows it, and a later
                    // change may reference something else.
                    self.held.insert(
                        rid.clone(),
                        Held {
                            references: Vec::new(),
                            resource: None,
                        },
                    );
                    set.insert_error(&rid, error);
                }
            }
        }
        Ok(())
    }

    /// Drops what no direct subscription reaches; answers it, sorted.
    fn collect(&mut self) -> Vec<Rid> {
        let mut reached: HashSet<Rid> = HashSet::new();
        let mut queue: Vec<Rid> = self.direct.keys().cloned().collect();
        while let Some(rid) = queue.pop() {
            if !reached.insert(rid.clone()) {
                continue;
            }
            if let Some(held) = self.held.get(&rid) {
                queue.extend(held.references.iter().cloned());
            }
        }
        let dropped: BTreeSet<Rid> = self
            .held
            .keys()
            .filter(|r| !reached.contains(*r))
            .cloned()
            .collect();
        self.held.retain(|r, _| reached.contains(r));
        dropped.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde_json::json;

    use super::*;
    use crate::Value;

    fn rid(text: &str) -> Rid {
        Rid::parse(text).unwrap()
    }

    /// A little world of resources, counting fetches.
    struct World {
        resources: HashMap<Rid, Resource>,
        fetched: RefCell<Vec<Rid>>,
    }

    impl World {
        fn new(entries: &[(&str, Resource)]) -> Self {
            Self {
                resources: entries
                    .iter()
                    .map(|(r, res)| (rid(r), res.clone()))
                    .collect(),
                fetched: RefCell::new(Vec::new()),
            }
        }

        fn fetch(&self) -> impl FnMut(Rid) -> std::future::Ready<Result<Resource, ResError>> + '_ {
            move |rid| {
                self.fetched.borrow_mut().push(rid.clone());
                std::future::ready(
                    self.resources
                        .get(&rid)
                        .cloned()
                        .ok_or_else(ResError::not_found),
                )
            }
        }
    }

    fn model(number: &str) -> Resource {
        Resource::model_from_json(json!({ "number": number }).as_object().unwrap().clone())
    }

    fn list(items: &[&str]) -> Resource {
        Resource::Collection(items.iter().map(|r| Value::reference(rid(r))).collect())
    }

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        // The futures here are ready at once: one poll finishes them.
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("a ready future"),
        }
    }

    #[test]
    fn a_collection_brings_what_it_references_once() {
        let world = World::new(&[
            (
                "flights.flights",
                list(&["flights.flight.1", "flights.flight.2"]),
            ),
            ("flights.flight.1", model("SK1")),
            ("flights.flight.2", model("SK2")),
        ]);
        let mut subs = Subscriptions::default();
        let set = block_on(subs.subscribe(&rid("flights.flights"), world.fetch())).unwrap();
        assert_eq!(set.collections.len(), 1);
        assert_eq!(set.models.len(), 2);
        assert_eq!(subs.len(), 3);
        assert_eq!(subs.direct(&rid("flights.flights")), 1);
        // Subscribing to a held model directly sends nothing new.
        let set = block_on(subs.subscribe(&rid("flights.flight.1"), world.fetch())).unwrap();
        assert!(set.is_empty());
        assert_eq!(world.fetched.borrow().len(), 3, "each fetched once");
        // The list goes; the model subscribed directly stays.
        let dropped = subs.unsubscribe(&rid("flights.flights"), 1).unwrap();
        assert_eq!(
            dropped,
            vec![rid("flights.flight.2"), rid("flights.flights")]
        );
        assert!(subs.holds(&rid("flights.flight.1")));
        assert_eq!(subs.len(), 1);
    }

    #[test]
    fn direct_subscriptions_are_counted() {
        let world = World::new(&[("flights.flight.1", model("SK1"))]);
        let mut subs = Subscriptions::default();
        let flight = rid("flights.flight.1");
        block_on(subs.subscribe(&flight, world.fetch())).unwrap();
        block_on(subs.subscribe(&flight, world.fetch())).unwrap();
        assert_eq!(subs.direct(&flight), 2);
        assert_eq!(
            subs.unsubscribe(&flight, 3).unwrap_err().code,
            "system.noSubscription"
        );
        assert_eq!(
            subs.direct(&flight),
            2,
            "a refused unsubscribe changes nothing"
        );
        assert!(subs.unsubscribe(&flight, 1).unwrap().is_empty());
        assert_eq!(subs.unsubscribe(&flight, 1).unwrap(), vec![flight.clone()]);
        assert_eq!(
            subs.unsubscribe(&flight, 1).unwrap_err().code,
            "system.noSubscription"
        );
        assert!(subs.is_empty());
    }

    #[test]
    fn a_missing_root_is_the_error_and_a_missing_reference_is_in_the_set() {
        let world = World::new(&[("flights.flights", list(&["flights.flight.9"]))]);
        let mut subs = Subscriptions::default();
        let err = block_on(subs.subscribe(&rid("flights.flight.1"), world.fetch())).unwrap_err();
        assert_eq!(err.code, "system.notFound");
        assert!(subs.is_empty());
        let set = block_on(subs.subscribe(&rid("flights.flights"), world.fetch())).unwrap();
        assert_eq!(set.errors.len(), 1);
        assert!(subs.holds(&rid("flights.flight.9")));
    }

    #[test]
    fn cycles_without_a_direct_subscription_hold_nothing() {
        let world = World::new(&[("a.one", list(&["a.two"])), ("a.two", list(&["a.one"]))]);
        let mut subs = Subscriptions::default();
        block_on(subs.subscribe(&rid("a.one"), world.fetch())).unwrap();
        assert_eq!(subs.len(), 2);
        let dropped = subs.unsubscribe(&rid("a.one"), 1).unwrap();
        assert_eq!(dropped, vec![rid("a.one"), rid("a.two")]);
        assert!(subs.is_empty());
    }

    #[test]
    fn the_limit_refuses_and_leaves_nothing_half_held() {
        let world = World::new(&[
            (
                "flights.flights",
                list(&["flights.flight.1", "flights.flight.2"]),
            ),
            ("flights.flight.1", model("SK1")),
            ("flights.flight.2", model("SK2")),
            ("flights.flight.3", model("SK3")),
        ]);
        let mut subs = Subscriptions::with_limit(2);
        let err = block_on(subs.subscribe(&rid("flights.flights"), world.fetch())).unwrap_err();
        assert_eq!(err.code, "cairn.subscription_limit");
        assert!(
            subs.is_empty(),
            "nothing of the refused subscription is held"
        );
        assert_eq!(subs.direct(&rid("flights.flights")), 0);
        block_on(subs.subscribe(&rid("flights.flight.1"), world.fetch())).unwrap();
        block_on(subs.subscribe(&rid("flights.flight.2"), world.fetch())).unwrap();
        assert!(block_on(subs.subscribe(&rid("flights.flight.3"), world.fetch())).is_err());
        assert_eq!(subs.len(), 2);
    }

    #[test]
    fn a_change_of_references_fetches_the_new_and_drops_the_old() {
        let world = World::new(&[
            ("flights.flights", list(&["flights.flight.1"])),
            ("flights.flight.1", model("SK1")),
            ("flights.flight.2", model("SK2")),
        ]);
        let mut subs = Subscriptions::default();
        let flights = rid("flights.flights");
        block_on(subs.subscribe(&flights, world.fetch())).unwrap();
        let (set, dropped) =
            block_on(subs.rereference(&flights, vec![rid("flights.flight.2")], world.fetch()));
        assert_eq!(set.models.keys().collect::<Vec<_>>(), ["flights.flight.2"]);
        assert_eq!(dropped, vec![rid("flights.flight.1")]);
        assert!(subs.holds(&rid("flights.flight.2")));
        // A change on something not held does nothing.
        let (set, dropped) =
            block_on(subs.rereference(&rid("x.y"), vec![rid("flights.flight.1")], world.fetch()));
        assert!(set.is_empty() && dropped.is_empty());
        assert!(!subs.holds(&rid("flights.flight.1")));
    }

    #[test]
    fn a_replaced_resource_is_kept_as_sent_and_its_new_references_fetched() {
        let world = World::new(&[
            ("flights.flights?status=a", list(&["flights.flight.1"])),
            ("flights.flight.1", model("SK1")),
            ("flights.flight.2", model("SK2")),
        ]);
        let mut subs = Subscriptions::default();
        let flights = rid("flights.flights?status=a");
        block_on(subs.subscribe(&flights, world.fetch())).unwrap();
        assert_eq!(subs.held_named("flights.flights"), vec![flights.clone()]);
        assert_eq!(subs.resource(&flights), Some(&list(&["flights.flight.1"])));
        let (set, dropped) =
            block_on(subs.replace(&flights, list(&["flights.flight.2"]), world.fetch()));
        assert_eq!(set.models.keys().collect::<Vec<_>>(), ["flights.flight.2"]);
        assert_eq!(dropped, vec![rid("flights.flight.1")]);
        assert_eq!(subs.resource(&flights), Some(&list(&["flights.flight.2"])));
        assert_eq!(subs.resource(&rid("flights.flight.2")), Some(&model("SK2")));
        // Not held: nothing happens.
        let (set, dropped) = block_on(subs.replace(&rid("x.y"), model("X"), world.fetch()));
        assert!(set.is_empty() && dropped.is_empty());
        assert!(subs.resource(&rid("x.y")).is_none());
    }

    #[test]
    fn events_are_applied_to_what_the_client_holds() {
        let world = World::new(&[
            ("flights.flights", list(&["flights.flight.1"])),
            ("flights.flight.1", model("SK1")),
            ("flights.flight.2", model("SK2")),
        ]);
        let mut subs = Subscriptions::default();
        let flights = rid("flights.flights");
        block_on(subs.subscribe(&flights, world.fetch())).unwrap();
        let fetched = world.fetched.borrow().len();
        let add = Event::add(
            flights.clone(),
            0,
            Value::reference(rid("flights.flight.2")),
            &ResourceSet::default(),
        );
        let (set, dropped) = block_on(subs.apply(&add, world.fetch()));
        assert_eq!(set.models.keys().collect::<Vec<_>>(), ["flights.flight.2"]);
        assert!(dropped.is_empty());
        assert_eq!(
            subs.resource(&flights),
            Some(&list(&["flights.flight.2", "flights.flight.1"]))
        );
        assert_eq!(
            world.fetched.borrow().len(),
            fetched + 1,
            "only the new reference is read, not the list"
        );
        let (set, dropped) =
            block_on(subs.apply(&Event::remove(flights.clone(), 1), world.fetch()));
        assert!(set.is_empty());
        assert_eq!(dropped, vec![rid("flights.flight.1")]);
        let change = Event::change(
            rid("flights.flight.2"),
            [
                ("number".to_owned(), None),
                (
                    "gate".to_owned(),
                    Some(Value::from_json(serde_json::json!("A1"))),
                ),
            ]
            .into(),
            &ResourceSet::default(),
        );
        block_on(subs.apply(&change, world.fetch()));
        assert_eq!(
            subs.resource(&rid("flights.flight.2")),
            Some(&Resource::model_from_json(
                serde_json::json!({"gate": "A1"})
                    .as_object()
                    .unwrap()
                    .clone()
            ))
        );
        // What does not apply changes nothing.
        for event in [
            Event::remove(flights.clone(), 9),
            Event::custom(flights.clone(), "tick", serde_json::json!({})).unwrap(),
            Event::remove(rid("x.y"), 0),
        ] {
            let before = subs.resource(&flights).cloned();
            let (set, dropped) = block_on(subs.apply(&event, world.fetch()));
            assert!(set.is_empty() && dropped.is_empty());
            assert_eq!(subs.resource(&flights).cloned(), before);
        }
    }

    #[test]
    fn revoking_ends_every_direct_subscription() {
        let world = World::new(&[("flights.flight.1", model("SK1"))]);
        let mut subs = Subscriptions::default();
        let flight = rid("flights.flight.1");
        block_on(subs.subscribe(&flight, world.fetch())).unwrap();
        block_on(subs.subscribe(&flight, world.fetch())).unwrap();
        assert_eq!(subs.revoke(&flight), vec![flight.clone()]);
        assert_eq!(subs.direct(&flight), 0);
        assert!(subs.directly_held().is_empty());
    }

    #[test]
    fn get_reads_without_holding() {
        let world = World::new(&[
            ("flights.flights", list(&["flights.flight.1"])),
            ("flights.flight.1", model("SK1")),
        ]);
        let set = block_on(Subscriptions::get(
            &rid("flights.flights"),
            10,
            world.fetch(),
        ))
        .unwrap();
        assert_eq!(set.models.len() + set.collections.len(), 2);
    }
}
