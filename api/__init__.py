"""The read API and dashboard page (`coachpipe api`)."""
