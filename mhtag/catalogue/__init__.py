"""The catalogue loop: labels corrected where people see them, reviewed, and heads retrained from the index."""
