"""The password hasher of the test process: production's PBKDF2, at one iteration.

A production hash costs a quarter of a second by design, and the suite makes
and checks passwords by the hundred (every admin fixture's user, every failed
login of the lockout tests). The hashes stay `pbkdf2_sha256`, their
iteration count written inside, so a server process a test starts with the
production hashers verifies them too.
"""

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class OneIterationPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    iterations = 1
