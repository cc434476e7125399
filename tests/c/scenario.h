/* What the C host scenarios share: counting broken promises, a monotonic clock, and opening a
 * clinic whose Live Sync watcher polls. */
#ifndef NPS_TEST_SCENARIO_H
#define NPS_TEST_SCENARIO_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "nanopix_sync.h"

static int broken;

static void expect(int holds, const char *promise) {
    if (!holds) {
        broken++;
        printf("BROKEN: %s\n", promise);
    }
}

static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* Opens the clinic; Live Sync's watcher, once switched on, polls every `poll_ms`. */
static NpsHandle *open_clinic(const char *root, const char *db, int poll_ms) {
    char config[4096];
    snprintf(config, sizeof config,
             "{\"nanopix_root\": \"%s\", \"dentaltid_db\": \"%s\", \"watch_mode\": \"polling\", \"poll_interval_ms\": %d}",
             root, db, poll_ms);
    NpsHandle *handle = NULL;
    if (nps_open(config, &handle) != NPS_OK) {
        char *message = nps_last_error_message();
        printf("nps_open failed: %s\n", message ? message : "(no message)");
        nps_string_free(message);
        exit(2);
    }
    return handle;
}

#endif
