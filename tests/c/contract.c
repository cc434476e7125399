/* Promises of the C API to a host such as DentalTID (Dart FFI) about work in flight, checked
 * from a real C host.
 *
 * Usage: contract <scenario> <PatientData> <dentaltid.db>, where the scenario is
 * close_cuts_short_export_existing.
 * Prints one line per broken promise and exits 1 if any; exits 0 otherwise; 2 when the
 * scenario could not be set up. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scenario.h"

/* close_cuts_short_export_existing: "Export existing" runs on a worker thread (a Dart isolate)
 * over a clinic with thousands of unlinked patients; the user quits, and the app's UI thread
 * calls nps_close. The engine stops work between patients when the handle closes, so the close
 * must return promptly (a few seconds at most), not after the whole export. */
static NpsHandle *exporting_handle;
static uint32_t export_code;
static uint64_t exported_count;

static void *export_existing(void *unused) {
    (void)unused;
    export_code = nps_export_existing(exporting_handle, &exported_count);
    return NULL;
}

static void close_cuts_short_export_existing(const char *root, const char *db) {
    exporting_handle = open_clinic(root, db, 100);
    pthread_t worker;
    pthread_create(&worker, NULL, export_existing, NULL);
    /* Wait, with a deadline, until the export is under way: its first patient_exported event. */
    int under_way = 0;
    double deadline = seconds_now() + 60.0;
    char *event = NULL;
    while (!under_way && seconds_now() < deadline) {
        if (nps_next_event(exporting_handle, 1000, &event) == NPS_OK) {
            under_way = strstr(event, "\"type\":\"patient_exported\"") != NULL;
            nps_string_free(event);
            event = NULL;
        }
    }
    if (!under_way) {
        printf("the export never started\n");
        exit(2);
    }
    double started = seconds_now();
    uint32_t close_code = nps_close(exporting_handle);
    double took = seconds_now() - started;
    pthread_join(worker, NULL);
    printf("nps_close returned %u after %.2f s; nps_export_existing returned %u with %llu exported\n",
           (unsigned)close_code, took, (unsigned)export_code, (unsigned long long)exported_count);
    expect(close_code == NPS_OK, "the handle closes");
    expect(took < 3.0, "nps_close cuts the export in flight short instead of waiting for all of it");
    nps_free(exporting_handle);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s <scenario> <PatientData> <dentaltid.db>\n", argv[0]);
        return 2;
    }
    const char *scenario = argv[1], *root = argv[2], *db = argv[3];
    if (strcmp(scenario, "close_cuts_short_export_existing") == 0) {
        close_cuts_short_export_existing(root, db);
    } else {
        fprintf(stderr, "unknown scenario %s\n", scenario);
        return 2;
    }
    return broken == 0 ? 0 : 1;
}
