"""Lightning callbacks shared by every stage."""
