//! How many replicas a wake asks for.

pub use kzscaler_core::spec::wake_replicas;

#[cfg(test)]
mod tests {
    use super::wake_replicas;

    #[test]
    fn wakes_to_at_least_one() {
        assert_eq!(wake_replicas(None, None, None), 1);
        assert_eq!(wake_replicas(Some(0), Some(0), None), 1);
    }

    #[test]
    fn wakes_to_the_largest_of_hpa_min_previous_and_annotation() {
        assert_eq!(wake_replicas(Some(2), Some(5), Some(3)), 5);
        assert_eq!(wake_replicas(Some(4), Some(1), None), 4);
        assert_eq!(wake_replicas(None, Some(1), Some(3)), 3);
    }
}
