from tests.fixtures.database import *  # noqa: F403
from tests.fixtures.s3 import *  # noqa: F403
from tests.fixtures.worker import *  # noqa: F403
