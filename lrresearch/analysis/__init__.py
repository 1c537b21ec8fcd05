"""Analysis of finished runs, which never trains: `compare`, the LR range test's
curve and suggestions, the profile report.
"""
