"""Push notifications to callees whose devices have no live socket."""
