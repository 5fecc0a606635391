"""What the reflecting model says and does: critique formats, stop and search policies, policy training."""
