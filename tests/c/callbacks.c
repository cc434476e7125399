/* The callbacks' promises around close, replacement and calls back into the library, from a real
 * C host.
 *
 * Usage: callbacks <scenario> <PatientData> <dentaltid.db>, where the scenario is one of
 * clear_during_close, drain_during_close, new_callback_gets_later_events,
 * wakeup_leaves_event_callback_whole, wait_in_callback_during_clear_and_close or
 * call_back_from_callbacks. Prints one line per broken promise and exits 1 if any; exits 0
 * otherwise. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "scenario.h"

static void pause_ms(long ms) {
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
}

static int is_type(const char *json, const char *type) {
    char field[64];
    snprintf(field, sizeof field, "\"type\":\"%s\"", type);
    return strstr(json, field) != NULL;
}

static long long seq_of(const char *json) {
    const char *seq = strstr(json, "\"seq\":");
    return seq ? strtoll(seq + 6, NULL, 10) : -1;
}

/* A flag threads wait on, each wait with a deadline. */
struct flag {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int raised;
};

static void raise_flag(struct flag *flag) {
    pthread_mutex_lock(&flag->lock);
    flag->raised = 1;
    pthread_cond_broadcast(&flag->changed);
    pthread_mutex_unlock(&flag->lock);
}

/* Whether the flag was raised within `ms` milliseconds. */
static int wait_flag(struct flag *flag, long ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&flag->lock);
    int result = 0;
    while (!flag->raised && result != ETIMEDOUT) result = pthread_cond_timedwait(&flag->changed, &flag->lock, &until);
    int raised = flag->raised;
    pthread_mutex_unlock(&flag->lock);
    return raised;
}

#define FLAG_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0}

/* clear_during_close: clearing the callback while another thread closes the handle returns only
 * once no call of the old callback is in flight, so the host may then release its userdata. */
static struct flag closed_delivered = FLAG_INIT, callback_released = FLAG_INIT, clear_returned = FLAG_INIT;
static atomic_int calls_in_flight;
static NpsHandle *closing_handle;
static uint32_t clear_code;
static int in_flight_when_cleared;

static void gated_callback(void *userdata, const char *json) {
    (void)userdata;
    atomic_fetch_add(&calls_in_flight, 1);
    if (is_type(json, "closed")) {
        raise_flag(&closed_delivered);
        /* Stays in flight until the host thread lets it go. */
        wait_flag(&callback_released, 10000);
    }
    atomic_fetch_sub(&calls_in_flight, 1);
}

static void *close_handle(void *handle) {
    nps_close(handle);
    return NULL;
}

static void *clear_callback(void *handle) {
    clear_code = nps_set_event_callback(handle, NULL, NULL);
    in_flight_when_cleared = atomic_load(&calls_in_flight);
    raise_flag(&clear_returned);
    return NULL;
}

static void clear_during_close(const char *root, const char *db) {
    closing_handle = open_clinic(root, db, 100);
    expect(nps_set_event_callback(closing_handle, gated_callback, NULL) == NPS_OK, "the callback is set");
    pthread_t closer, clearer;
    pthread_create(&closer, NULL, close_handle, closing_handle);
    expect(wait_flag(&closed_delivered, 10000), "the closing handle delivers `closed` to the callback");
    pthread_create(&clearer, NULL, clear_callback, closing_handle);
    /* A clear that returns while the call is held in flight has broken its promise; one that
     * keeps waiting is let go after a second by ending the call. */
    wait_flag(&clear_returned, 1000);
    raise_flag(&callback_released);
    pthread_join(clearer, NULL);
    pthread_join(closer, NULL);
    expect(clear_code == NPS_CLOSED, "clearing the callback of a closing handle gives NPS_CLOSED");
    expect(in_flight_when_cleared == 0, "no call of the old callback is in flight once the clear returns");
    nps_free(closing_handle);
}

/* drain_during_close: a callback that drains the queue when `closed` arrives gets NPS_CLOSED
 * once it is empty, at once, and the close does not wait for its timeout. */
static NpsHandle *draining_handle;
static uint32_t last_drain_code;
static double last_drain_wait;

static void draining_callback(void *userdata, const char *json) {
    (void)userdata;
    if (!is_type(json, "closed")) return;
    char *event = NULL;
    double started = seconds_now();
    while ((last_drain_code = nps_next_event(draining_handle, 6000, &event)) == NPS_OK) {
        nps_string_free(event);
        event = NULL;
        started = seconds_now();
    }
    last_drain_wait = seconds_now() - started;
}

static void drain_during_close(const char *root, const char *db) {
    draining_handle = open_clinic(root, db, 100);
    expect(nps_set_event_callback(draining_handle, draining_callback, NULL) == NPS_OK, "the callback is set");
    expect(nps_close(draining_handle) == NPS_OK, "the handle closes");
    printf("the callback's last wait took %.2f s\n", last_drain_wait);
    expect(last_drain_code == NPS_CLOSED, "the emptied queue of a closed handle gives NPS_CLOSED");
    expect(last_drain_wait < 3.0, "a closed handle's queue does not keep a waiter for its timeout");
    nps_free(draining_handle);
}

/* new_callback_gets_later_events: a callback that replaces a slow one, which still had events
 * to be given, is given only the events made after it was set. */
static void slow_callback(void *userdata, const char *json) {
    (void)userdata;
    (void)json;
    pause_ms(50);
}

static atomic_llong first_seq_seen = -1;

static void recording_callback(void *userdata, const char *json) {
    (void)userdata;
    long long expected = -1;
    atomic_compare_exchange_strong(&first_seq_seen, &expected, seq_of(json));
}

static void new_callback_gets_later_events(const char *root, const char *db) {
    NpsHandle *handle = open_clinic(root, db, 100);
    expect(nps_set_event_callback(handle, slow_callback, NULL) == NPS_OK, "the slow callback is set");
    for (int i = 0; i < 6; i++) expect(nps_set_live_sync(handle, i % 2 == 0) == NPS_OK, "Live Sync switches");
    long long drained = 0;
    char *event = NULL;
    while (nps_next_event(handle, 0, &event) == NPS_OK) {
        drained = seq_of(event);
        nps_string_free(event);
        event = NULL;
    }
    expect(nps_set_event_callback(handle, recording_callback, NULL) == NPS_OK, "the new callback replaces it");
    expect(nps_set_live_sync(handle, true) == NPS_OK, "Live Sync switches on once more");
    expect(nps_close(handle) == NPS_OK, "the handle closes");
    long long first = atomic_load(&first_seq_seen);
    printf("the queue was drained up to seq %lld; the new callback's first event is seq %lld\n", drained, first);
    expect(first > drained, "the new callback is given no event made before it was set");
    nps_free(handle);
}

/* wakeup_leaves_event_callback_whole: setting the wakeup callback while the event callback still
 * has events on their way to it takes none of them from the event callback. */
#define MAX_SEQS 4096
static long long seqs_seen[MAX_SEQS];
static int seqs_count;
static atomic_int wakeups;

static void slow_recording_callback(void *userdata, const char *json) {
    (void)userdata;
    if (seqs_count < MAX_SEQS) seqs_seen[seqs_count++] = seq_of(json);
    pause_ms(20);
}

static void counting_wakeup(void *userdata) {
    (void)userdata;
    atomic_fetch_add(&wakeups, 1);
}

static void wakeup_leaves_event_callback_whole(const char *root, const char *db) {
    NpsHandle *handle = open_clinic(root, db, 100);
    expect(nps_set_event_callback(handle, slow_recording_callback, NULL) == NPS_OK, "the event callback is set");
    for (int i = 0; i < 4; i++) expect(nps_set_live_sync(handle, i % 2 == 0) == NPS_OK, "Live Sync switches");
    expect(nps_set_wakeup_callback(handle, counting_wakeup, NULL) == NPS_OK, "the wakeup callback is set");
    expect(nps_set_live_sync(handle, true) == NPS_OK, "Live Sync switches on once more");
    expect(nps_close(handle) == NPS_OK, "the handle closes");
    int gaps = 0;
    for (int i = 1; i < seqs_count; i++) gaps += seqs_seen[i] != seqs_seen[i - 1] + 1;
    printf("the event callback got %d events, seq %lld to %lld, with %d gaps; %d wakeups\n", seqs_count,
           seqs_count ? seqs_seen[0] : -1, seqs_count ? seqs_seen[seqs_count - 1] : -1, gaps, atomic_load(&wakeups));
    expect(seqs_count > 0 && gaps == 0, "the event callback is given every event from the first it got");
    expect(atomic_load(&wakeups) > 0, "the wakeup callback is called for the events made after it was set");
    nps_free(handle);
}

/* wait_in_callback_during_clear_and_close: a callback waiting in nps_next_event is woken by a
 * close, even while another thread clears the callback (and so waits for that very call). */
static NpsHandle *waiting_handle;
static struct flag callback_waiting = FLAG_INIT;
static uint32_t waiting_code;
static double waiting_last_wait;
static atomic_int waiting_entered;

static void waiting_callback(void *userdata, const char *json) {
    (void)userdata;
    (void)json;
    if (atomic_exchange(&waiting_entered, 1)) return;
    char *event = NULL;
    double started = seconds_now();
    raise_flag(&callback_waiting);
    while ((waiting_code = nps_next_event(waiting_handle, 6000, &event)) == NPS_OK) {
        nps_string_free(event);
        event = NULL;
        started = seconds_now();
    }
    waiting_last_wait = seconds_now() - started;
}

static void *clear_waiting_callback(void *handle) {
    nps_set_event_callback(handle, NULL, NULL);
    return NULL;
}

static void wait_in_callback_during_clear_and_close(const char *root, const char *db) {
    waiting_handle = open_clinic(root, db, 100);
    expect(nps_set_event_callback(waiting_handle, waiting_callback, NULL) == NPS_OK, "the callback is set");
    char *report = NULL;
    expect(nps_reconcile(waiting_handle, &report) == NPS_OK, "a reconcile makes an event");
    nps_string_free(report);
    expect(wait_flag(&callback_waiting, 5000), "the callback runs");
    pause_ms(300);
    pthread_t clearing;
    pthread_create(&clearing, NULL, clear_waiting_callback, waiting_handle);
    pause_ms(300);
    double started = seconds_now();
    expect(nps_close(waiting_handle) == NPS_OK, "the handle closes");
    double took = seconds_now() - started;
    pthread_join(clearing, NULL);
    printf("close took %.2f s; the callback's last wait took %.2f s and gave %u\n", took, waiting_last_wait,
           (unsigned)waiting_code);
    expect(took < 3.0, "close wakes a callback waiting in nps_next_event, and does not wait for its timeout");
    expect(waiting_last_wait < 3.0, "the callback's wait ends when the handle closes");
    expect(waiting_code == NPS_CLOSED, "the callback's wait on a closing handle gives NPS_CLOSED");
    nps_free(waiting_handle);
}

/* call_back_from_callbacks: both callbacks may call the library back (a reconcile, the patients
 * list, Live Sync, the queue), while closing, freeing and setting callbacks from inside one give
 * NPS_WRONG_THREAD (nps_free only sets the last error) and leave the handle open. */
enum { CALLS_BACK = 8 };
static NpsHandle *calling_handle;
static uint32_t event_calls[CALLS_BACK], wakeup_calls[2];
static int freed_message_set;
static atomic_int event_called_back, wakeup_called_back;
static struct flag event_done = FLAG_INIT, wakeup_done = FLAG_INIT;

static void calling_back_callback(void *userdata, const char *json) {
    (void)userdata;
    (void)json;
    if (atomic_exchange(&event_called_back, 1)) return;
    char *text = NULL;
    bool enabled = false;
    event_calls[0] = nps_reconcile(calling_handle, &text);
    nps_string_free(text);
    text = NULL;
    event_calls[1] = nps_patients(calling_handle, NPS_FILTER_ALL, &text);
    nps_string_free(text);
    text = NULL;
    event_calls[2] = nps_set_live_sync(calling_handle, false);
    event_calls[3] = nps_next_event(calling_handle, 0, &text);
    nps_string_free(text);
    event_calls[4] = nps_close(calling_handle);
    event_calls[5] = nps_set_event_callback(calling_handle, NULL, NULL);
    event_calls[6] = nps_set_wakeup_callback(calling_handle, NULL, NULL);
    nps_free(calling_handle);
    char *message = nps_last_error_message();
    freed_message_set = message != NULL && strstr(message, "nps_free") != NULL;
    nps_string_free(message);
    event_calls[7] = nps_live_sync(calling_handle, &enabled);
    raise_flag(&event_done);
}

static void calling_back_wakeup(void *userdata) {
    (void)userdata;
    if (atomic_exchange(&wakeup_called_back, 1)) return;
    char *report = NULL;
    wakeup_calls[0] = nps_reconcile(calling_handle, &report);
    nps_string_free(report);
    wakeup_calls[1] = nps_close(calling_handle);
    raise_flag(&wakeup_done);
}

static void call_back_from_callbacks(const char *root, const char *db) {
    calling_handle = open_clinic(root, db, 100);
    expect(nps_set_event_callback(calling_handle, calling_back_callback, NULL) == NPS_OK, "the callback is set");
    expect(nps_set_live_sync(calling_handle, true) == NPS_OK, "Live Sync switches on, an event");
    expect(wait_flag(&event_done, 30000), "the event callback's calls back all return");
    expect(nps_set_event_callback(calling_handle, NULL, NULL) == NPS_OK, "the event callback is cleared");
    expect(nps_set_wakeup_callback(calling_handle, calling_back_wakeup, NULL) == NPS_OK, "the wakeup is set");
    expect(nps_set_live_sync(calling_handle, true) == NPS_OK, "Live Sync switches on again, an event");
    expect(wait_flag(&wakeup_done, 30000), "the wakeup callback's calls back all return");
    expect(nps_set_wakeup_callback(calling_handle, NULL, NULL) == NPS_OK, "the wakeup is cleared");
    printf("from the event callback: reconcile %u, patients %u, live sync off %u, next event %u, close %u,"
           " set event callback %u, set wakeup %u, live sync read %u; from the wakeup: reconcile %u, close %u\n",
           (unsigned)event_calls[0], (unsigned)event_calls[1], (unsigned)event_calls[2], (unsigned)event_calls[3],
           (unsigned)event_calls[4], (unsigned)event_calls[5], (unsigned)event_calls[6], (unsigned)event_calls[7],
           (unsigned)wakeup_calls[0], (unsigned)wakeup_calls[1]);
    expect(event_calls[0] == NPS_OK && event_calls[1] == NPS_OK && event_calls[2] == NPS_OK,
           "a reconcile, the patients list and switching Live Sync off work from inside the event callback");
    expect(event_calls[3] == NPS_OK || event_calls[3] == NPS_TIMEOUT, "the queue answers inside the event callback");
    expect(event_calls[4] == NPS_WRONG_THREAD && event_calls[5] == NPS_WRONG_THREAD &&
               event_calls[6] == NPS_WRONG_THREAD,
           "closing and setting callbacks from inside the event callback give NPS_WRONG_THREAD");
    expect(freed_message_set && event_calls[7] == NPS_OK,
           "nps_free from inside the event callback only sets the last error: the handle stays open");
    expect(wakeup_calls[0] == NPS_OK && wakeup_calls[1] == NPS_WRONG_THREAD,
           "a reconcile works from inside the wakeup callback, and closing there gives NPS_WRONG_THREAD");
    expect(nps_close(calling_handle) == NPS_OK, "the handle closes");
    nps_free(calling_handle);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s <scenario> <PatientData> <dentaltid.db>\n", argv[0]);
        return 2;
    }
    const char *scenario = argv[1], *root = argv[2], *db = argv[3];
    if (strcmp(scenario, "clear_during_close") == 0) {
        clear_during_close(root, db);
    } else if (strcmp(scenario, "drain_during_close") == 0) {
        drain_during_close(root, db);
    } else if (strcmp(scenario, "new_callback_gets_later_events") == 0) {
        new_callback_gets_later_events(root, db);
    } else if (strcmp(scenario, "wakeup_leaves_event_callback_whole") == 0) {
        wakeup_leaves_event_callback_whole(root, db);
    } else if (strcmp(scenario, "wait_in_callback_during_clear_and_close") == 0) {
        wait_in_callback_during_clear_and_close(root, db);
    } else if (strcmp(scenario, "call_back_from_callbacks") == 0) {
        call_back_from_callbacks(root, db);
    } else {
        fprintf(stderr, "unknown scenario %s\n", scenario);
        return 2;
    }
    return broken == 0 ? 0 : 1;
}
