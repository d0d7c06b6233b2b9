"""Image contests: theme, submission window, voting window, results picture and an all-time leaderboard."""
