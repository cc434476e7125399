/*
 * A C host for nanopix-sync: opens a sync, lists patients, switches Live Sync on, exports one
 * DentalTID patient to NanoPix and waits for its `patient_exported` event, lists the possible
 * duplicates awaiting review, then drains the queue, closes and frees. Exit code 0 on success.
 *
 * Usage: host <NanoPix PatientData folder> <dentaltid.db>
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nanopix_sync.h"

enum { WAIT_MS = 10000, MAX_EVENTS = 1000 };

static atomic_int events_seen_by_callback;
static atomic_int wakeups;

static void on_event(void *userdata, const char *event_json) {
    (void)userdata;
    (void)event_json;
    atomic_fetch_add(&events_seen_by_callback, 1);
}

static void on_wakeup(void *userdata) {
    (void)userdata;
    atomic_fetch_add(&wakeups, 1);
}

static int failed(const char *what, uint32_t code) {
    char *message = nps_last_error_message();
    fprintf(stderr, "%s failed with code %u: %s\n", what, (unsigned)code, message ? message : "(no message)");
    nps_string_free(message);
    return 0;
}

/* Appends `text` to `out` as a JSON string body (quotes and backslashes escaped). */
static int json_escape(char *out, size_t size, const char *text) {
    size_t used = strlen(out);
    for (; *text; text++) {
        if (used + 3 >= size) return 0;
        if (*text == '"' || *text == '\\') out[used++] = '\\';
        out[used++] = *text;
    }
    out[used] = '\0';
    return 1;
}

static int open_sync(const char *nanopix_root, const char *dentaltid_db, NpsHandle **handle) {
    char config[8192] = "{\"nanopix_root\": \"";
    if (!json_escape(config, sizeof config, nanopix_root)) return 0;
    strcat(config, "\", \"dentaltid_db\": \"");
    if (!json_escape(config, sizeof config - 64, dentaltid_db)) return 0;
    strcat(config, "\", \"watch_mode\": \"polling\", \"poll_interval_ms\": 200}");
    uint32_t code = nps_open(config, handle);
    return code == NPS_OK || failed("nps_open", code);
}

/* The id of the first patient without a NanoPix link, read from the `nps_patients` JSON. */
static long long first_unlinked_patient(const char *patients_json) {
    const char *object = patients_json;
    while ((object = strstr(object, "{\"id\":")) != NULL) {
        long long id = strtoll(object + 6, NULL, 10);
        const char *end = strchr(object, '}');
        const char *unlinked = strstr(object, "\"external_id\":null");
        if (end && unlinked && unlinked < end) return id;
        object += 6;
    }
    return -1;
}

static long long list_patients(NpsHandle *handle) {
    char *patients = NULL;
    uint32_t code = nps_patients(handle, NPS_FILTER_ALL, &patients);
    if (code != NPS_OK) return failed("nps_patients", code), -1;
    printf("patients: %s\n", patients);
    long long id = first_unlinked_patient(patients);
    nps_string_free(patients);
    return id;
}

/* Prints the possible duplicates awaiting review (a JSON array). */
static int list_possible_duplicates(NpsHandle *handle) {
    char *duplicates = NULL;
    uint32_t code = nps_possible_duplicates(handle, &duplicates);
    if (code != NPS_OK) return failed("nps_possible_duplicates", code);
    printf("possible duplicates: %s\n", duplicates);
    nps_string_free(duplicates);
    return 1;
}

/* Waits for the `patient_exported` event that names `external_id`. */
static int wait_for_export(NpsHandle *handle, const char *external_id) {
    for (int seen = 0; seen < MAX_EVENTS; seen++) {
        char *event = NULL;
        uint32_t code = nps_next_event(handle, WAIT_MS, &event);
        if (code != NPS_OK) return failed("nps_next_event", code);
        printf("event: %s\n", event);
        int found = strstr(event, "\"type\":\"patient_exported\"") && strstr(event, external_id);
        nps_string_free(event);
        if (found) return 1;
    }
    fprintf(stderr, "no patient_exported event for %s\n", external_id);
    return 0;
}

static int drain(NpsHandle *handle, uint32_t expected_end) {
    char *event = NULL;
    uint32_t code;
    while ((code = nps_next_event(handle, 0, &event)) == NPS_OK) {
        printf("event: %s\n", event);
        nps_string_free(event);
        event = NULL;
    }
    return code == expected_end || failed("draining nps_next_event", code);
}

static int export_one(NpsHandle *handle) {
    long long patient_id = list_patients(handle);
    if (patient_id < 0) return fprintf(stderr, "no unlinked DentalTID patient to export\n"), 0;
    uint32_t code = nps_set_live_sync(handle, true);
    if (code != NPS_OK) return failed("nps_set_live_sync", code);
    char *external_id = NULL;
    code = nps_export_patient(handle, patient_id, &external_id);
    if (code != NPS_OK) return failed("nps_export_patient", code);
    printf("exported patient %lld as %s\n", patient_id, external_id);
    int ok = wait_for_export(handle, external_id);
    nps_string_free(external_id);
    return ok;
}

static int run(NpsHandle *handle) {
    printf("nanopix-sync %s\n", nps_version());
    uint32_t code = nps_set_event_callback(handle, on_event, NULL);
    if (code != NPS_OK) return failed("nps_set_event_callback", code);
    code = nps_set_wakeup_callback(handle, on_wakeup, NULL);
    if (code != NPS_OK) return failed("nps_set_wakeup_callback", code);
    if (!export_one(handle) || !list_possible_duplicates(handle) || !drain(handle, NPS_TIMEOUT)) return 0;
    if ((code = nps_close(handle)) != NPS_OK || (code = nps_close(handle)) != NPS_OK) return failed("nps_close", code);
    if (!drain(handle, NPS_CLOSED)) return 0;
    char *json = NULL;
    if ((code = nps_patients(handle, NPS_FILTER_ALL, &json)) != NPS_CLOSED) return failed("nps_patients after close", code);
    printf("callback saw %d events, %d wakeups\n", atomic_load(&events_seen_by_callback), atomic_load(&wakeups));
    return atomic_load(&events_seen_by_callback) > 0 && atomic_load(&wakeups) > 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <PatientData folder> <dentaltid.db>\n", argv[0]);
        return 2;
    }
    NpsHandle *handle = NULL;
    if (!open_sync(argv[1], argv[2], &handle)) return 1;
    int ok = run(handle);
    nps_free(handle);
    nps_free(handle); /* a second free is ignored */
    NpsHandle *found = NULL;
    int code = nps_find_open_handle(&found);
    if (code != NPS_NO_HANDLE) ok = failed("nps_find_open_handle after nps_free", code);
    return ok ? 0 : 1;
}
