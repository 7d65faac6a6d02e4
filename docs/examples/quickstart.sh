#!/bin/sh
# The README's first command: migrate, enqueue a few jobs, run a worker until the queues are
# empty. With no PGJOBS_DATABASE_URL it uses the embedded PostgreSQL in ./.pgjobs/.
set -eu
export PGJOBS_APP=docs.examples.quickstart:app
export PGJOBS_QUEUES=critical:3,default:1
pgjobs migrate
pgjobs enqueue greet --args '["world"]'
pgjobs enqueue flaky --args '["flaky job"]'
pgjobs enqueue count_words --args '["to be or not to be"]'
pgjobs worker --burst
pgjobs stats
