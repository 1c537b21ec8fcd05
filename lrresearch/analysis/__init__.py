"""Analysis of finished runs, which never trains: `compare`, the LR range test's
suggestions, the profile report.
"""
