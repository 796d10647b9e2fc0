/*
 * Latchkey dashboard: the App Credentials page (Credentials > App Credentials).
 *
 * One vanilla ES2020 file, no framework and no build step. It talks to the
 * /v1 API on the same origin with the session cookie, sends the page's CSRF
 * token (<meta name="csrf-token">) with every request, and goes to /login
 * when the API answers 401.
 *
 * Rules kept throughout:
 *  - DOM is built with createElement/textContent; API data never passes
 *    through innerHTML.
 *  - No inline styles (the CSP forbids them): state shows through classes,
 *    data attributes and the `hidden` attribute.
 *  - Secrets are write-only: typed secrets are read from the inputs only to
 *    build a request, are never kept in JS state, and the inputs are wiped
 *    whenever the Add/Edit dialog closes. The same holds for the export
 *    passphrase and the Export dialog; an export is only ever the sealed
 *    file the server makes.
 *
 * Sections: helpers · API · toast · focus · list (filters, table, pages) ·
 * Add/Edit dialog (step 1, step 2, errors, save) · View dialog · Test ·
 * Delete · Export · start-up.
 */
(() => {
  'use strict';

  // ------------------------------------------------------------- constants

  const PAGE_SIZE = 20;
  const SEARCH_DEBOUNCE_MS = 250;
  const TOAST_MS = 4000;
  const EVENTS_SHOWN = 10;
  /** The server's minimum too: a shorter passphrase is refused with a 422. */
  const EXPORT_MIN_PASSPHRASE = 12;
  /** The download's name when the answer carries none. */
  const EXPORT_FILENAME = 'latchkey-export.lkx';
  /** How long a download's object URL lives; revoking it at once can cancel the download. */
  const OBJECT_URL_MS = 60 * 1000;

  /** The five service roles, in the order of the design's user journey. */
  const ROLES = [
    ['token_validation', 'Token Validation Service'],
    ['user_id_mapper', 'User Id Mapper Service'],
    ['action_callback_parser', 'Action Call back Parser Service'],
    ['webhook_parser', 'Webhook Parser Service'],
    ['webhook_event_verification', 'Webhook Event Verification Service'],
  ];

  const STATUS_LABELS = { valid: 'Valid', invalid: 'Invalid', unverified: 'Unverified' };
  const AUTH_TYPE_LABELS = { api_key: 'API Key' };
  const ACTIONS = [['view', 'View'], ['edit', 'Edit'], ['test', 'Test'], ['delete', 'Delete'], ['export', 'Export']];
  const COLUMN_LABELS = {
    name: 'Name',
    integration: 'Integration',
    'auth-type': 'Authentication Type',
    status: 'Status',
    checked: 'Last checked',
    updated: 'Updated',
    actions: 'Actions',
  };

  /** API field names that belong to step 1 of the Add Credentials dialog. */
  const STEP1_FIELDS = new Set(['name', 'description', 'integration', 'auth_type', 'services']);
  /** API field name → id of the input that holds it. */
  const FIELD_INPUTS = {
    name: 'name',
    description: 'description',
    integration: 'integration',
    auth_type: 'auth-type',
    api_key: 'api-key',
  };

  // ------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  /** Attributes set with setAttribute rather than as properties. */
  const ATTRIBUTES = new Set(['for', 'role', 'spellcheck', 'datetime', 'scope', 'autocomplete']);

  /**
   * Creates an element. `props`: `text` (textContent), `class`, `dataset`,
   * attributes (aria-*, data-*, ATTRIBUTES) and otherwise DOM properties.
   * `children` are nodes or strings (appended as text, never parsed).
   */
  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'text') node.textContent = String(value);
      else if (key === 'class') node.className = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.includes('-') || ATTRIBUTES.has(key)) node.setAttribute(key, String(value));
      else node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  function option(value, text, selected = false) {
    const o = el('option', { value, text });
    if (selected) o.selected = true;
    return o;
  }

  /** A query string from the non-empty entries of `params`. */
  function qs(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== '') search.set(key, String(value));
    }
    const text = search.toString();
    return text ? `?${text}` : '';
  }

  const credentialPath = (id) => `/v1/credentials/${encodeURIComponent(id)}`;
  const statusLabel = (status) => STATUS_LABELS[status] || status || 'Unknown';
  const authTypeLabel = (type) => AUTH_TYPE_LABELS[type] || type || '';

  /** First letter of a name, for the app icon (Unicode-aware). */
  function initial(name) {
    const first = Array.from(String(name || '').trim())[0];
    return first ? first.toUpperCase() : '?';
  }

  /** A stable colour class per integration, so icons are told apart at a glance. */
  function hueClass(text) {
    let h = 0;
    for (const ch of String(text || '')) h = (h * 31 + ch.codePointAt(0)) % 997;
    return `hue-${h % 8}`;
  }

  function appIcon(name, key) {
    return el('span', { class: `app-icon ${hueClass(key || name)}`, 'aria-hidden': 'true', text: initial(name) });
  }

  function badge(status, title) {
    return el('span', {
      class: 'badge',
      dataset: { status: status || 'unverified' },
      title: title || undefined,
      text: statusLabel(status),
    });
  }

  /** How a stored secret is shown: never its value. */
  function secretText(state) {
    if (!state || !state.set) return 'not set';
    return state.last4 ? `•••• ${state.last4}` : 'set';
  }

  // Times

  const relativeFormat =
    typeof Intl !== 'undefined' && Intl.RelativeTimeFormat
      ? new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' })
      : null;

  function formatLocal(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  /** "just now", "5 minutes ago", "yesterday"; a local date beyond a week. */
  function formatRelative(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    const seconds = Math.round((date.getTime() - Date.now()) / 1000);
    const abs = Math.abs(seconds);
    if (abs < 45 || !relativeFormat) return abs < 45 ? 'just now' : date.toLocaleString();
    if (abs < 3600) return relativeFormat.format(Math.round(seconds / 60), 'minute');
    if (abs < 86400) return relativeFormat.format(Math.round(seconds / 3600), 'hour');
    if (abs < 7 * 86400) return relativeFormat.format(Math.round(seconds / 86400), 'day');
    return date.toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
  }

  /** A <time> that shows a relative time and the full local time on hover. */
  function timeNode(iso, never = 'never') {
    if (!iso) return document.createTextNode(never);
    return el('time', {
      datetime: iso,
      title: formatLocal(iso),
      dataset: { relative: 'true' },
      text: formatRelative(iso),
    });
  }

  function refreshRelativeTimes() {
    for (const node of document.querySelectorAll('time[data-relative]')) {
      node.textContent = formatRelative(node.getAttribute('datetime'));
    }
  }

  function isShown(node) {
    return Boolean(node && node.isConnected && node.getClientRects().length > 0 && !node.disabled);
  }

  // ------------------------------------------------------------- API

  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute('content') || '' : '';

  const NETWORK_PROBLEM = {
    code: 'network',
    detail: 'Latchkey could not be reached. Check the connection and try again.',
  };

  /**
   * Sends a request with the session cookie and the CSRF token. Resolves to
   * the Response, or null when the server could not be reached. A 401 means
   * the session ended: the page goes to /login and the promise never settles.
   */
  async function send(method, path, body, headers) {
    const init = {
      method,
      credentials: 'same-origin',
      cache: 'no-store',
      headers: {
        'X-CSRF-Token': csrf,
        'Content-Type': 'application/json',
        ...headers,
      },
    };
    if (body !== undefined) init.body = JSON.stringify(body);
    let res;
    try {
      res = await fetch(path, init);
    } catch (_) {
      return null;
    }
    if (res.status === 401) {
      window.location.assign('/login');
      return new Promise(() => {});
    }
    return res;
  }

  /** The JSON body of an answer, or null; a failure without one gets a made-up problem. */
  async function readJson(res) {
    let data = null;
    const type = res.headers.get('Content-Type') || '';
    if (res.status !== 204 && type.includes('json')) {
      try {
        data = await res.json();
      } catch (_) {
        data = null;
      }
    }
    if (!res.ok && !data) {
      data = { code: `http_${res.status}`, detail: `The server answered ${res.status} ${res.statusText}.`.trim() };
    }
    return data;
  }

  /**
   * Calls the API. Resolves to `{ ok, status, data }` where `data` is the
   * JSON body (a problem document on failure). A 401 means the session ended:
   * the page goes to /login and the promise never settles.
   */
  async function api(method, path, body, extraHeaders = {}) {
    const res = await send(method, path, body, {
      Accept: 'application/json, application/problem+json',
      ...extraHeaders,
    });
    if (!res) return { ok: false, status: 0, data: { ...NETWORK_PROBLEM } };
    return { ok: res.ok, status: res.status, data: await readJson(res) };
  }

  /**
   * Calls an API that answers with a file. Resolves like api(), plus, on
   * success, `blob` (the file) and `filename` (from Content-Disposition, or
   * `fallbackName`).
   */
  async function apiFile(method, path, body, fallbackName) {
    const res = await send(method, path, body, { Accept: 'application/octet-stream, application/problem+json' });
    if (!res) return { ok: false, status: 0, data: { ...NETWORK_PROBLEM } };
    if (!res.ok) return { ok: false, status: res.status, data: await readJson(res) };
    let blob;
    try {
      blob = await res.blob();
    } catch (_) {
      return { ok: false, status: 0, data: { ...NETWORK_PROBLEM } };
    }
    const filename = attachmentName(res.headers.get('Content-Disposition'), fallbackName);
    return { ok: true, status: res.status, data: null, blob, filename };
  }

  /** The file name a Content-Disposition header gives, as a bare name; `fallback` without one. */
  function attachmentName(header, fallback) {
    const text = String(header || '');
    let name = '';
    const extended = /filename\*\s*=\s*utf-8''([^;\s]+)/i.exec(text);
    if (extended) {
      try {
        name = decodeURIComponent(extended[1]);
      } catch (_) {
        name = '';
      }
    }
    if (!name) {
      const plain = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/i.exec(text);
      if (plain) name = plain[1] !== undefined ? plain[1].replace(/\\(.)/g, '$1') : plain[2];
    }
    // Never a path: only the last segment, without control characters.
    name = name.split(/[\\/]/).pop().replace(/[\u0000-\u001f\u007f]/g, '').trim();
    return name && name !== '.' && name !== '..' ? name : fallback;
  }

  /** Hands a file to the browser's downloads through a temporary link. */
  function saveFile(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = el('a', { href: url, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), OBJECT_URL_MS);
  }

  function problemText(res) {
    const p = (res && res.data) || {};
    return p.detail || p.title || `The request failed (${res ? res.status : 'no answer'}).`;
  }

  // ------------------------------------------------------------- toast

  let toastTimer = 0;

  /**
   * Shows a short confirmation for about four seconds. While a modal dialog
   * is open the rest of the page is inert and under the backdrop, so the
   * toast moves into that dialog to stay visible and announced.
   */
  function toast(message) {
    const node = $('toast');
    const host = document.querySelector('dialog[open]') || document.body;
    if (node.parentElement !== host) host.append(node);
    node.textContent = message;
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      node.hidden = true;
      node.textContent = '';
    }, TOAST_MS);
  }

  function rehomeToast(dialog) {
    const node = $('toast');
    if (dialog.contains(node)) document.body.append(node);
  }

  // ------------------------------------------------------------- focus

  const returnTargets = new WeakMap();

  /** Opens a modal dialog and remembers what to focus when it closes. */
  function openModal(dialog, opener) {
    returnTargets.set(dialog, opener || document.activeElement);
    dialog.showModal();
  }

  /** Focus goes back to the button that opened the dialog, or to the page heading. */
  function restoreFocus(dialog) {
    const target = returnTargets.get(dialog);
    returnTargets.delete(dialog);
    if (isShown(target)) target.focus();
    else $('page-title').focus();
  }

  // ------------------------------------------------------------- list

  const list = {
    cursors: [null], // cursors[n] fetches page n; page 0 has none
    page: 0,
    nextCursor: null,
    items: [],
    seq: 0, // drops answers that arrive after a newer request
    justAdded: null,
  };

  const state = {
    integrations: [], // catalog summaries, sorted by name
    integrationsReady: Promise.resolve(),
    integrationDetails: new Map(), // id → Promise<detail | null>
    pendingDelete: null,
    pendingExport: null, // the credential the Export dialog is for
    exportSeq: 0, // drops an export answer once its dialog has closed
    exportBusy: false,
  };

  function currentFilters() {
    return {
      q: $('search').value.trim(),
      integration: $('filter-integration').value,
      status: $('filter-status').value,
    };
  }

  const hasFilters = (f) => Boolean(f.q || f.integration || f.status);

  function clearFilters() {
    clearTimeout(searchTimer);
    $('search').value = '';
    $('filter-integration').value = '';
    $('filter-status').value = '';
  }

  function reloadFromStart() {
    list.cursors = [null];
    list.page = 0;
    return loadPage();
  }

  /** Fetches the current page with the current filters and renders it. */
  async function loadPage() {
    const seq = ++list.seq;
    const filters = currentFilters();
    const table = $('credentials');
    table.setAttribute('aria-busy', 'true');
    const res = await api(
      'GET',
      `/v1/credentials${qs({ ...filters, limit: PAGE_SIZE, cursor: list.cursors[list.page] })}`,
    );
    if (seq !== list.seq) return;
    table.removeAttribute('aria-busy');
    if (!res.ok) {
      showListError(problemText(res));
      return;
    }
    $('list-error').hidden = true;
    const items = Array.isArray(res.data.items) ? res.data.items : [];
    // A page emptied by a delete: step back rather than show nothing.
    if (items.length === 0 && list.page > 0) {
      list.page -= 1;
      return loadPage();
    }
    list.items = items;
    list.nextCursor = res.data.next_cursor || null;
    renderTable(items, filters);
    renderPager();
    list.justAdded = null;
  }

  function showListError(message) {
    $('list-error-text').textContent = `The credentials could not be loaded. ${message}`;
    $('list-error').hidden = false;
  }

  /** Renders rows, the empty state or the no-results message; keeps focus on the equivalent control. */
  function renderTable(items, filters) {
    const tbody = $('credentials').tBodies[0];
    const focusInfo = describeFocus(tbody);

    tbody.replaceChildren(...items.map(renderRow));

    const empty = items.length === 0;
    const filtered = hasFilters(filters);
    $('empty-state').hidden = !(empty && !filtered);
    $('no-results').hidden = !(empty && filtered);
    if (empty && filtered) $('no-results-text').textContent = noResultsText(filters);
    $('table-wrap').hidden = empty;
    $('pager').hidden = empty && list.page === 0;

    restoreListFocus(focusInfo, tbody);
  }

  function describeFocus(tbody) {
    const active = document.activeElement;
    if (!active || active === document.body) return null;
    const row = tbody.contains(active) ? active.closest('tr') : null;
    return { node: active, rowId: row ? row.dataset.id : null, action: active.dataset.action || null };
  }

  function restoreListFocus(info, tbody) {
    if (!info || document.querySelector('dialog[open]')) return;
    if (isShown(info.node)) return;
    if (info.rowId) {
      const row = Array.from(tbody.rows).find((r) => r.dataset.id === info.rowId);
      const button = row && info.action ? row.querySelector(`button[data-action="${info.action}"]`) : null;
      if (button) {
        button.focus();
        return;
      }
    }
    if (info.node.id === 'empty-create' && isShown($('create-credential'))) $('create-credential').focus();
    else $('page-title').focus();
  }

  function noResultsText(f) {
    const parts = [];
    if (f.q) parts.push(`“${f.q}”`);
    if (f.integration) {
      const found = state.integrations.find((i) => i.id === f.integration);
      parts.push(`integration ${found ? found.name : f.integration}`);
    }
    if (f.status) parts.push(`status ${statusLabel(f.status)}`);
    return `No credentials match ${parts.join(', ')}.`;
  }

  function cell(column, children) {
    return el('td', { class: column, 'data-label': COLUMN_LABELS[column] }, children);
  }

  function renderRow(c) {
    const row = el('tr', { dataset: { id: c.id } });
    if (c.id === list.justAdded) row.classList.add('just-added');
    const name = c.integration_name || c.integration;
    const buttons = ACTIONS.map(([action, text]) =>
      el('button', {
        type: 'button',
        class: `${action} button small`,
        dataset: { action },
        'aria-label': `${text} ${c.name}`,
        text,
      }),
    );
    row.append(
      cell('name', [c.name]),
      cell('integration', [appIcon(name, c.integration), name]),
      cell('auth-type', [authTypeLabel(c.auth_type)]),
      cell('status', [badge(c.status, c.status_message)]),
      cell('checked', [timeNode(c.checked_at)]),
      cell('updated', [timeNode(c.updated_at)]),
      cell('actions', [el('div', { class: 'action-buttons' }, buttons)]),
    );
    return row;
  }

  /** Replaces one row after a change (e.g. a Test), keeping focus on the same button. */
  function replaceRow(c) {
    const index = list.items.findIndex((item) => item.id === c.id);
    if (index >= 0) list.items[index] = c;
    const tbody = $('credentials').tBodies[0];
    const old = Array.from(tbody.rows).find((r) => r.dataset.id === c.id);
    if (!old) return;
    const focusInfo = describeFocus(tbody);
    old.replaceWith(renderRow(c));
    restoreListFocus(focusInfo, tbody);
  }

  function renderPager() {
    $('prev-page').disabled = list.page === 0;
    $('next-page').disabled = !list.nextCursor;
    $('page-info').textContent = list.page > 0 || list.nextCursor ? `Page ${list.page + 1}` : '';
  }

  function goToPage(delta) {
    if (delta > 0) {
      if (!list.nextCursor) return;
      list.cursors[list.page + 1] = list.nextCursor;
    } else if (list.page === 0) {
      return;
    }
    list.page += delta;
    loadPage().then(() => {
      // A pager button that just became disabled has lost focus.
      const other = delta > 0 ? $('prev-page') : $('next-page');
      const self = delta > 0 ? $('next-page') : $('prev-page');
      if (self.disabled && document.activeElement !== other) {
        if (!other.disabled) other.focus();
        else $('page-title').focus();
      }
    });
  }

  function findListed(id) {
    return list.items.find((item) => item.id === id) || null;
  }

  // Catalog (for the Integration filter and the dialog)

  async function loadIntegrations() {
    const res = await api('GET', '/v1/integrations');
    if (!res.ok) {
      toast(`The integration catalog could not be loaded. ${problemText(res)}`);
      return;
    }
    state.integrations = (res.data.items || []).slice().sort((a, b) => a.name.localeCompare(b.name));
    const select = $('filter-integration');
    const current = select.value;
    select.replaceChildren(
      option('', 'All integrations'),
      ...state.integrations.map((i) => option(i.id, i.name)),
    );
    select.value = current;
  }

  function getIntegration(id) {
    if (!state.integrationDetails.has(id)) {
      const pending = api('GET', `/v1/integrations/${encodeURIComponent(id)}`).then((res) => {
        if (res.ok) return res.data;
        state.integrationDetails.delete(id);
        return null;
      });
      state.integrationDetails.set(id, pending);
    }
    return state.integrationDetails.get(id);
  }

  /** The services that fit an integration, one list per role (null where a request failed). */
  function loadServices(integrationId) {
    return Promise.all(
      ROLES.map(([role]) =>
        api('GET', `/v1/services${qs({ integration: integrationId, role })}`).then((res) =>
          res.ok && Array.isArray(res.data.items) ? res.data.items : null,
        ),
      ),
    );
  }

  // ------------------------------------------------------------- Add/Edit dialog

  const dialogState = {
    mode: 'create', // or 'edit'
    step: 1,
    credential: null, // the credential being edited (no secrets: the API never returns any)
    detail: null, // integration detail of the chosen integration
    busy: false,
    seq: 0, // integration selections; older answers are dropped
    loading: Promise.resolve(),
    sentScopes: [], // checkbox per index of the last request's `scopes`
    sentRows: [], // param row per index of the last request's `config_params`
    errorTargets: new Map(), // error element id → element to focus
  };
  let rowSeq = 0;
  let scopeSeq = 0;
  let errorSeq = 0;

  function credentialDialog() {
    return $('credential-dialog');
  }

  async function openCreate(opener) {
    const dialog = credentialDialog();
    if (dialog.open) return;
    resetDialog();
    dialogState.mode = 'create';
    $('dialog-title').textContent = 'Add Credentials';
    $('api-key').placeholder = '';
    setIntegrationLocked(false);
    showStep(1, false);
    openModal(dialog, opener);
    $('name').focus();
    await state.integrationsReady;
    fillIntegrationOptions();
  }

  async function openEdit(id, opener) {
    const dialog = credentialDialog();
    if (dialog.open) return;
    opener.setAttribute('aria-busy', 'true');
    const res = await api('GET', credentialPath(id));
    opener.removeAttribute('aria-busy');
    if (!res.ok) {
      toast(problemText(res));
      return;
    }
    const c = res.data;
    await state.integrationsReady;
    resetDialog();
    dialogState.mode = 'edit';
    dialogState.credential = c;
    $('dialog-title').textContent = 'Edit Credential';
    $('name').value = c.name;
    $('description').value = c.description || '';
    $('api-key').placeholder = 'Leave empty to keep the current key';
    fillIntegrationOptions(c);
    $('integration').value = c.integration;
    setIntegrationLocked(true);
    showStep(1, false);
    openModal(dialog, opener);
    $('name').focus();
    selectIntegration(c.integration, c);
  }

  /** Puts the dialog back to a blank Add state; wipes every typed secret. */
  function resetDialog() {
    wipeSecrets();
    clearErrors();
    hideSaveError();
    $('credential-form').reset();
    $('integration-filter').value = '';
    dialogState.credential = null;
    dialogState.detail = null;
    dialogState.seq += 1;
    dialogState.loading = Promise.resolve();
    dialogState.sentScopes = [];
    dialogState.sentRows = [];
    clearIntegrationDependents();
    $('integration-hint').textContent = '';
    $('integration-count').textContent = '';
    setBusy(false);
  }

  /** Clears the API key and every config param value, then drops the rows. */
  function wipeSecrets() {
    const key = $('api-key');
    key.value = '';
    key.type = 'password';
    const toggle = $('toggle-key');
    toggle.textContent = 'Show';
    toggle.setAttribute('aria-pressed', 'false');
    for (const input of document.querySelectorAll('#param-rows .param-value')) input.value = '';
    $('param-rows').replaceChildren();
    $('scope-new').value = '';
    dialogState.sentRows = [];
  }

  function onCredentialDialogClose() {
    wipeSecrets();
    dialogState.seq += 1; // ignore integration answers still on their way
    rehomeToast(credentialDialog());
    restoreFocus(credentialDialog());
  }

  /** An edited credential keeps its integration and auth type (the API cannot change them). */
  function setIntegrationLocked(locked) {
    $('integration').disabled = locked;
    $('integration-filter').disabled = locked;
    $('integration-filter').closest('.field').hidden = locked;
  }

  function showStep(step, moveFocus = true) {
    dialogState.step = step;
    $('step-1').hidden = step !== 1;
    $('step-2').hidden = step !== 2;
    $('step-indicator').textContent = `Step ${step} of 2`;
    if (moveFocus) (step === 2 ? $('api-key') : $('name')).focus();
  }

  function setBusy(busy, message = '') {
    dialogState.busy = busy;
    for (const id of ['next', 'save', 'save-unverified']) $(id).disabled = busy;
    $('credential-form').setAttribute('aria-busy', String(busy));
    $('next-status').textContent = busy && dialogState.step === 1 ? message : '';
    $('save-status').textContent = busy && dialogState.step === 2 ? message : '';
  }

  // Step 1: integration, auth type, services

  /** Fills the Integration select with the catalog entries matching the search box. */
  function fillIntegrationOptions(keep = null) {
    const select = $('integration');
    const current = keep ? keep.integration : select.value;
    const needle = $('integration-filter').value.trim().toLowerCase();
    const matches = state.integrations.filter(
      (i) => !needle || i.name.toLowerCase().includes(needle) || i.id.toLowerCase().includes(needle),
    );
    const options = [option('', 'Choose an app…'), ...matches.map((i) => option(i.id, i.name))];
    if (current && !matches.some((i) => i.id === current)) {
      const known = state.integrations.find((i) => i.id === current);
      options.push(option(current, known ? known.name : keep ? keep.integration_name || current : current));
    }
    select.replaceChildren(...options);
    select.value = current || '';
    const count = $('integration-count');
    if (!needle) count.textContent = '';
    else if (matches.length === 0) count.textContent = `No integration matches “${needle}”.`;
    else count.textContent = `${matches.length} of ${state.integrations.length} integrations match.`;
    return matches;
  }

  function describeIntegration(id) {
    const found = state.integrations.find((i) => i.id === id);
    return found ? found.description || '' : '';
  }

  function clearIntegrationDependents() {
    const auth = $('auth-type');
    auth.replaceChildren(option('', 'Choose an integration first'));
    auth.disabled = true;
    for (const [role] of ROLES) {
      const select = $(`service-${role}`);
      select.replaceChildren(option('', 'Choose an integration first'));
      select.disabled = true;
    }
    $('scope-list').replaceChildren();
    for (const input of document.querySelectorAll('#param-rows .param-value')) input.value = '';
    $('param-rows').replaceChildren();
    $('api-key-hint').textContent = '';
  }

  /**
   * Loads what the chosen integration offers: its auth types, the services
   * that fit each role (pre-selected with its defaults, or the edited
   * credential's choices), its scopes and its config params.
   */
  function selectIntegration(id, credential = null) {
    const seq = ++dialogState.seq;
    dialogState.detail = null;
    clearIntegrationDependents();
    $('integration-hint').textContent = describeIntegration(id);
    if (!id) {
      dialogState.loading = Promise.resolve();
      return dialogState.loading;
    }
    for (const [role] of ROLES) $(`service-${role}`).replaceChildren(option('', 'Loading…'));
    dialogState.loading = (async () => {
      const [detail, services] = await Promise.all([getIntegration(id), loadServices(id)]);
      if (seq !== dialogState.seq) return;
      if (!detail) {
        showErrors([{ field: 'integration', message: 'This integration could not be loaded; choose it again.' }]);
        return;
      }
      dialogState.detail = detail;
      fillAuthTypes(detail, credential);
      fillServices(services, credential ? credential.services || {} : detail.defaults || {});
      fillStep2(credential);
    })();
    return dialogState.loading;
  }

  function fillAuthTypes(detail, credential) {
    const select = $('auth-type');
    const types = Array.isArray(detail.auth) ? detail.auth : [];
    select.replaceChildren(...types.map((a) => option(a.type, a.label || authTypeLabel(a.type))));
    if (credential) select.value = credential.auth_type;
    select.disabled = Boolean(credential) || types.length === 0;
  }

  function fillServices(servicesByRole, selected) {
    ROLES.forEach(([role], index) => {
      const select = $(`service-${role}`);
      const items = servicesByRole[index] || [];
      const chosen = selected[role] || '';
      const options = items.map((s) => option(s.id, s.builtin === false ? `${s.name} (custom)` : s.name));
      if (chosen && !items.some((s) => s.id === chosen)) options.unshift(option(chosen, chosen));
      if (options.length === 0) options.push(option('', 'No service fits this integration'));
      select.replaceChildren(...options);
      select.value = chosen || (items[0] ? items[0].id : '');
      select.disabled = items.length === 0 && !chosen;
    });
  }

  /** The chosen auth type's spec in the integration detail. */
  function authSpec() {
    const detail = dialogState.detail;
    if (!detail || !Array.isArray(detail.auth)) return null;
    return detail.auth.find((a) => a.type === $('auth-type').value) || detail.auth[0] || null;
  }

  // Step 2: API key, scopes, config params

  function fillStep2(credential) {
    const spec = authSpec();
    if (!spec) return;
    const fields = Array.isArray(spec.fields) ? spec.fields : [];
    const keyField = fields.find((f) => f.name === 'api_key');
    const hints = [];
    if (keyField) {
      if (keyField.label && keyField.label !== 'API Key') {
        hints.push(`${dialogState.detail.name} calls it “${keyField.label}”.`);
      }
      if (keyField.help) hints.push(keyField.help);
    }
    if (credential && credential.api_key && credential.api_key.set) {
      hints.push(`Stored: ${secretText(credential.api_key)}.`);
    }
    $('api-key-hint').textContent = hints.join(' ');
    fillScopes(spec.scopes || [], credential ? credential.scopes || [] : []);
    fillParams(fields, credential);
  }

  function fillScopes(known, chosen) {
    $('scope-list').replaceChildren();
    const all = [...known, ...chosen.filter((s) => !known.includes(s))];
    for (const scope of all) addScope(scope, chosen.includes(scope));
  }

  function addScope(scope, checked) {
    const id = `scope-opt-${++scopeSeq}`;
    const input = el('input', { type: 'checkbox', name: 'scope', value: scope, id, checked });
    const box = el('div', { class: 'check' }, [input, el('label', { for: id, text: scope })]);
    $('scope-list').append(box);
    return input;
  }

  function onAddScope() {
    const field = $('scope-new');
    const scope = field.value.trim();
    if (!scope) {
      field.focus();
      return;
    }
    const existing = Array.from(document.querySelectorAll('#scope-list input[name="scope"]')).find(
      (i) => i.value === scope,
    );
    if (existing) existing.checked = true;
    else addScope(scope, true);
    field.value = '';
    field.focus();
  }

  function fieldHint(f) {
    const parts = [f.label + (f.required ? '' : ' (optional)')];
    if (f.help) parts.push(f.help);
    return parts.join(' — ');
  }

  /**
   * Create: one row per field of the integration other than api_key (key
   * read-only when required, Secret fixed where the integration says so,
   * value left for the person). Edit: the credential's own params; a stored
   * secret's value stays empty and means "keep".
   */
  function fillParams(fields, credential) {
    for (const input of document.querySelectorAll('#param-rows .param-value')) input.value = '';
    $('param-rows').replaceChildren();
    const declared = new Map(fields.filter((f) => f.name !== 'api_key').map((f) => [f.name, f]));
    if (!credential) {
      for (const f of declared.values()) {
        addParamRow({
          key: f.name,
          secret: Boolean(f.secret),
          secretLocked: Boolean(f.secret),
          keyLocked: Boolean(f.required),
          optional: !f.required,
          hint: fieldHint(f),
        });
      }
      return;
    }
    for (const p of credential.config_params || []) {
      const f = declared.get(p.key);
      const hint = [];
      if (f) hint.push(fieldHint(f));
      if (p.secret) hint.push(`Stored: ${secretText(p.value)}.`);
      addParamRow({
        key: p.key,
        value: p.secret ? '' : String(p.value ?? ''),
        secret: Boolean(p.secret),
        secretLocked: Boolean(f && f.secret),
        keyLocked: Boolean(f && f.required),
        storedSecret: p.secret ? p.key : null,
        hint: hint.join(' '),
      });
    }
  }

  function removeLabel(key) {
    return key ? `Remove ${key}` : 'Remove this param';
  }

  function addParamRow(opts = {}) {
    const n = ++rowSeq;
    const key = el('input', {
      type: 'text',
      class: 'param-key',
      'aria-label': 'Key',
      value: opts.key || '',
      readOnly: Boolean(opts.keyLocked),
      autocomplete: 'off',
      spellcheck: 'false',
    });
    const value = el('input', {
      type: opts.secret ? 'password' : 'text',
      class: 'param-value',
      'aria-label': 'Value',
      value: opts.value || '',
      autocomplete: 'off',
      spellcheck: 'false',
    });
    const secret = el('input', {
      type: 'checkbox',
      class: 'param-secret',
      checked: Boolean(opts.secret),
      disabled: Boolean(opts.secretLocked),
    });
    const remove = el('button', {
      type: 'button',
      class: 'param-remove button subtle small',
      'aria-label': removeLabel(opts.key),
      disabled: Boolean(opts.keyLocked),
      title: opts.keyLocked ? 'Required by the integration' : undefined,
      text: 'Remove',
    });
    const row = el('div', { class: 'param-row' }, [
      key,
      value,
      el('label', { class: 'check param-secret-label' }, [secret, 'Secret']),
      remove,
    ]);
    if (opts.optional) row.dataset.optional = 'true';
    if (opts.storedSecret) row.dataset.storedSecret = opts.storedSecret;
    if (opts.hint) {
      const hintId = `param-hint-${n}`;
      row.append(el('p', { class: 'hint param-hint', id: hintId, text: opts.hint }));
      value.setAttribute('aria-describedby', hintId);
    }
    updateValuePlaceholder(row);
    $('param-rows').append(row);
    return row;
  }

  /** A stored secret left empty is kept; say so while the row still is that secret. */
  function updateValuePlaceholder(row) {
    const value = row.querySelector('.param-value');
    value.placeholder = keepsStoredSecret(row) ? 'Leave empty to keep' : '';
  }

  function keepsStoredSecret(row) {
    return (
      dialogState.mode === 'edit' &&
      Boolean(row.dataset.storedSecret) &&
      row.dataset.storedSecret === row.querySelector('.param-key').value.trim() &&
      row.querySelector('.param-secret').checked
    );
  }

  function onParamRowsInput(event) {
    const row = event.target.closest('.param-row');
    if (!row) return;
    if (event.target.classList.contains('param-key')) {
      row.querySelector('.param-remove').setAttribute('aria-label', removeLabel(event.target.value.trim()));
      updateValuePlaceholder(row);
    }
  }

  function onParamRowsChange(event) {
    if (!event.target.classList.contains('param-secret')) return;
    const row = event.target.closest('.param-row');
    row.querySelector('.param-value').type = event.target.checked ? 'password' : 'text';
    updateValuePlaceholder(row);
  }

  function onParamRowsClick(event) {
    const button = event.target.closest('.param-remove');
    if (!button) return;
    const row = button.closest('.param-row');
    const next = row.nextElementSibling || row.previousElementSibling;
    row.querySelector('.param-value').value = '';
    row.remove();
    const target = next && next.querySelector('.param-remove:not(:disabled)');
    (target || $('add-param')).focus();
  }

  function onToggleKey() {
    const input = $('api-key');
    const show = input.type === 'password';
    input.type = show ? 'text' : 'password';
    $('toggle-key').textContent = show ? 'Hide' : 'Show';
    $('toggle-key').setAttribute('aria-pressed', String(show));
  }

  // Building requests (secrets are read from the inputs here and nowhere else)

  function collectServices() {
    const services = {};
    for (const [role] of ROLES) {
      const value = $(`service-${role}`).value;
      if (value) services[role] = value;
    }
    return services;
  }

  function collectScopes() {
    const inputs = Array.from(document.querySelectorAll('#scope-list input[name="scope"]:checked'));
    dialogState.sentScopes = inputs;
    return inputs.map((i) => i.value);
  }

  /**
   * Rows → config_params. Skipped: blank rows, and optional integration
   * fields left empty. A stored secret left empty is sent without a value
   * (the API keeps it).
   */
  function collectParams() {
    const params = [];
    const rows = [];
    for (const row of document.querySelectorAll('#param-rows .param-row')) {
      const key = row.querySelector('.param-key').value.trim();
      const value = row.querySelector('.param-value').value;
      const secret = row.querySelector('.param-secret').checked;
      if (!key && !value) continue;
      if (!value && keepsStoredSecret(row)) {
        params.push({ key, secret: true });
      } else if (!value && row.dataset.optional === 'true') {
        continue;
      } else {
        params.push({ key, value, secret });
      }
      rows.push(row);
    }
    dialogState.sentRows = rows;
    return params;
  }

  /** The whole draft as POST /v1/credentials and /validate take it. */
  function collectDraft() {
    const draft = {
      name: $('name').value,
      description: $('description').value,
      integration: $('integration').value,
      auth_type: $('auth-type').value || 'api_key',
      services: collectServices(),
      scopes: collectScopes(),
      config_params: collectParams(),
    };
    const apiKey = $('api-key').value;
    if (apiKey) draft.api_key = apiKey;
    return draft;
  }

  /** PATCH body: changed name/description, services, scopes, params; the key only if typed. */
  function collectPatch(validate) {
    const c = dialogState.credential;
    const draft = collectDraft();
    const body = {
      services: draft.services,
      scopes: draft.scopes,
      config_params: draft.config_params,
      validate,
    };
    if (draft.name.trim() !== c.name) body.name = draft.name;
    if (draft.description !== (c.description || '')) body.description = draft.description;
    if (draft.api_key) body.api_key = draft.api_key;
    return body;
  }

  // Errors

  function isStep1Field(field) {
    return STEP1_FIELDS.has(field) || String(field).startsWith('services.');
  }

  function inField(input) {
    return { place: (p) => input.closest('.field').append(p), focus: input, mark: input };
  }

  function paramRowForKey(key) {
    return Array.from(document.querySelectorAll('#param-rows .param-row')).find(
      (row) => row.querySelector('.param-key').value.trim() === key,
    );
  }

  /** A required param the person removed: put its row back so the error has a home. */
  function restoreParamRow(key) {
    const spec = authSpec();
    const f = spec && (spec.fields || []).find((x) => x.name === key);
    return addParamRow(
      f
        ? { key, secret: Boolean(f.secret), secretLocked: Boolean(f.secret), keyLocked: Boolean(f.required), hint: fieldHint(f) }
        : { key },
    );
  }

  /** Where an API field's error goes and which input it marks. */
  function errorTarget(field) {
    if (FIELD_INPUTS[field]) return inField($(FIELD_INPUTS[field]));
    let m = /^services\.(\w+)$/.exec(field);
    if (m && $(`service-${m[1]}`)) return inField($(`service-${m[1]}`));
    if (field === 'services') {
      return { place: (p) => $('config-services').append(p), focus: $(`service-${ROLES[0][0]}`) };
    }
    if (field === 'scopes') {
      return { place: (p) => $('scope-list').after(p), focus: $('scope-new') };
    }
    m = /^scopes\[(\d+)\]$/.exec(field);
    if (m) {
      const input = dialogState.sentScopes[Number(m[1])];
      if (input) return { place: (p) => input.closest('.check').after(p), focus: input, mark: input };
      return { place: (p) => $('scope-list').after(p), focus: $('scope-new') };
    }
    if (field === 'config_params') {
      return { place: (p) => $('param-rows').after(p), focus: $('add-param') };
    }
    m = /^config_params\[(\d+)\]\.(\w+)$/.exec(field);
    if (m) {
      const row = dialogState.sentRows[Number(m[1])];
      if (row) {
        const input = row.querySelector(m[2] === 'value' ? '.param-value' : '.param-key');
        return { place: (p) => row.append(p), focus: input, mark: input };
      }
    }
    m = /^config_params\.(.+)$/.exec(field);
    if (m) {
      const row = paramRowForKey(m[1]) || restoreParamRow(m[1]);
      const input = row.querySelector('.param-value');
      return { place: (p) => row.append(p), focus: input, mark: input };
    }
    return null;
  }

  /** Shows each `{field, message}` beside its field; unknown fields go to the form's alert. */
  function showErrors(errors) {
    const leftovers = [];
    for (const e of errors) {
      const field = String(e.field || '');
      const id = `field-error-${++errorSeq}`;
      const message = e.message || 'This value is not valid.';
      const target = errorTarget(field);
      if (!target) {
        leftovers.push(el('li', { class: 'field-error', id, 'data-for': field, text: field ? `${field}: ${message}` : message }));
        continue;
      }
      target.place(el('p', { class: 'field-error', id, 'data-for': field, text: message }));
      if (target.mark) {
        target.mark.setAttribute('aria-invalid', 'true');
        const described = target.mark.getAttribute('aria-describedby');
        target.mark.setAttribute('aria-describedby', described ? `${described} ${id}` : id);
      }
      if (target.focus) dialogState.errorTargets.set(id, target.focus);
    }
    if (leftovers.length) {
      const box = $('form-error');
      box.replaceChildren(el('p', { text: 'Please fix the following:' }), el('ul', {}, leftovers));
      box.hidden = false;
    }
  }

  function showFormError(message) {
    const box = $('form-error');
    box.replaceChildren(el('p', { text: message }));
    box.hidden = false;
  }

  function clearErrors() {
    const dialog = credentialDialog();
    for (const node of dialog.querySelectorAll('.field-error')) node.remove();
    for (const node of dialog.querySelectorAll('[aria-invalid]')) {
      node.removeAttribute('aria-invalid');
      const kept = (node.getAttribute('aria-describedby') || '')
        .split(/\s+/)
        .filter((id) => id && !id.startsWith('field-error-'));
      if (kept.length) node.setAttribute('aria-describedby', kept.join(' '));
      else node.removeAttribute('aria-describedby');
    }
    dialogState.errorTargets.clear();
    $('form-error').hidden = true;
    $('form-error').replaceChildren();
  }

  function focusFirstError() {
    for (const node of credentialDialog().querySelectorAll('.field-error')) {
      const target = dialogState.errorTargets.get(node.id);
      if (isShown(target)) {
        target.focus();
        return;
      }
    }
    if (!$('form-error').hidden) $('form-error').scrollIntoView({ block: 'nearest' });
  }

  function showSaveError(message, offerUnverified) {
    $('save-error').textContent = message;
    $('save-error').hidden = false;
    $('save-unverified').hidden = !offerUnverified;
  }

  function hideSaveError() {
    $('save-error').hidden = true;
    $('save-error').textContent = '';
    $('save-unverified').hidden = true;
  }

  // Next, Back, Save

  /** Step 1 → 2: the API checks the draft; only step-1 fields' errors stop here. */
  async function goNext() {
    if (dialogState.busy) return;
    clearErrors();
    if (dialogState.mode === 'edit') {
      if (!$('name').value.trim()) {
        showErrors([{ field: 'name', code: 'required', message: 'Give the credential a name.' }]);
        focusFirstError();
        return;
      }
      showStep(2);
      return;
    }
    setBusy(true, 'Checking…');
    await dialogState.loading;
    if (!credentialDialog().open) {
      setBusy(false);
      return;
    }
    const res = await api('POST', '/v1/credentials/validate', collectDraft());
    setBusy(false);
    if (!credentialDialog().open || dialogState.step !== 1) return;
    if (res.ok) {
      showStep(2);
      return;
    }
    const errors = res.data && Array.isArray(res.data.errors) ? res.data.errors : null;
    if (!errors) {
      showFormError(problemText(res));
      return;
    }
    const step1 = errors.filter((e) => isStep1Field(e.field));
    if (step1.length) {
      showErrors(step1);
      focusFirstError();
      return;
    }
    showStep(2);
  }

  function goBack() {
    hideSaveError();
    showStep(1);
  }

  /** Save (validate: true) or Save without checking (validate: false). */
  async function save(validate) {
    if (dialogState.busy) return;
    const mode = dialogState.mode;
    clearErrors();
    // Keep "Save without checking" in place while it is the button being used.
    if (validate) hideSaveError();
    else $('save-error').hidden = true;
    setBusy(true, validate ? 'Checking the key with the Token Validation Service…' : 'Saving…');
    await dialogState.loading;
    if (!credentialDialog().open) {
      setBusy(false);
      return;
    }
    const res =
      mode === 'create'
        ? await api('POST', '/v1/credentials', { ...collectDraft(), validate })
        : await api('PATCH', credentialPath(dialogState.credential.id), collectPatch(validate), {
            'If-Match': `"${dialogState.credential.version}"`,
          });
    setBusy(false);
    if (res.ok) {
      afterSaved(res.data, mode);
      return;
    }
    if (!credentialDialog().open) return;
    showSaveProblem(res);
  }

  function showSaveProblem(res) {
    const p = res.data || {};
    if (p.code === 'token_rejected' || p.code === 'provider_unreachable') {
      showSaveError(p.detail || problemText(res), true);
      $('save-unverified').focus();
      return;
    }
    if (Array.isArray(p.errors) && p.errors.length) {
      hideSaveError();
      showErrors(p.errors);
      if (p.errors.some((e) => isStep1Field(e.field))) showStep(1, false);
      focusFirstError();
      return;
    }
    showSaveError(problemText(res), false);
    $('save-error').scrollIntoView({ block: 'nearest' });
  }

  async function afterSaved(c, mode) {
    const dialog = credentialDialog();
    if (dialog.open) dialog.close();
    if (mode === 'create') {
      clearFilters();
      list.justAdded = c.id;
      toast(`Credential “${c.name}” created.`);
      await reloadFromStart();
    } else {
      toast(`Credential “${c.name}” saved.`);
      await loadPage();
    }
  }

  function submitStep() {
    if (dialogState.step === 1) goNext();
    else save(true);
  }

  function onFormSubmit(event) {
    event.preventDefault();
    submitStep();
  }

  /** Enter in a one-line field: Next on step 1, Save on step 2 (Next and Save are not submit buttons). */
  const ENTER_SUBMITS = new Set(['text', 'password', 'search', 'email', 'url', 'number']);
  function onFormKeydown(event) {
    const t = event.target;
    if (event.key !== 'Enter' || event.isComposing || event.defaultPrevented) return;
    if (event.shiftKey || event.ctrlKey || event.altKey || event.metaKey) return;
    if (t.tagName !== 'INPUT' || !ENTER_SUBMITS.has(t.type)) return;
    event.preventDefault();
    submitStep();
  }

  function onFilterKeydown(event) {
    if (event.key !== 'Enter') return;
    event.preventDefault();
    const matches = fillIntegrationOptions();
    if (matches.length === 1 && $('integration').value !== matches[0].id) {
      $('integration').value = matches[0].id;
      selectIntegration(matches[0].id);
    }
    $('integration').focus();
  }

  function onScopeKeydown(event) {
    if (event.key !== 'Enter') return;
    event.preventDefault();
    onAddScope();
  }

  // ------------------------------------------------------------- View dialog

  async function openView(id, opener) {
    const dialog = $('view-dialog');
    if (dialog.open) return;
    resetView();
    const listed = findListed(id);
    $('view-title').textContent = listed ? listed.name : 'Credential';
    openModal(dialog, opener);
    const [cred, events] = await Promise.all([
      api('GET', credentialPath(id)),
      api('GET', `/v1/events${qs({ credential_id: id, limit: EVENTS_SHOWN })}`),
    ]);
    if (!dialog.open) return;
    if (!cred.ok) {
      $('view-error').textContent = problemText(cred);
      $('view-error').hidden = false;
      return;
    }
    renderView(cred.data, events);
  }

  function resetView() {
    $('view-error').hidden = true;
    $('view-description').hidden = true;
    for (const id of ['view-integration', 'view-auth-type', 'view-api-key', 'view-status', 'view-scopes', 'view-params', 'view-services', 'view-counters', 'view-events']) {
      $(id).replaceChildren();
    }
    for (const id of ['view-webhook-url', 'view-action-url', 'view-auth-url']) $(id).textContent = '…';
    $('view-params-empty').hidden = true;
    $('view-events').append(el('p', { class: 'muted', text: 'Loading…' }));
  }

  function renderView(c, events) {
    $('view-title').textContent = c.name;
    $('view-description').textContent = c.description || '';
    $('view-description').hidden = !c.description;
    const name = c.integration_name || c.integration;
    $('view-integration').replaceChildren(appIcon(name, c.integration), name);
    $('view-auth-type').textContent = authTypeLabel(c.auth_type);
    $('view-api-key').textContent = secretText(c.api_key);
    renderViewStatus(c);
    renderViewScopes(c.scopes || []);
    renderViewParams(c.config_params || []);
    renderDefinitions(
      $('view-services'),
      ROLES.map(([role, label]) => [label, el('code', { text: (c.services || {})[role] || '—' })]),
    );
    renderUrls(c);
    renderCounters(c.ingress);
    renderEvents(events);
  }

  function renderViewStatus(c) {
    const parts = [badge(c.status)];
    if (c.status_message) parts.push(el('span', { text: c.status_message }));
    parts.push(
      el('span', { class: 'muted' }, c.checked_at ? ['Checked ', timeNode(c.checked_at)] : ['Never checked']),
    );
    $('view-status').replaceChildren(el('span', { class: 'status-line' }, parts));
  }

  function renderViewScopes(scopes) {
    const target = $('view-scopes');
    if (!scopes.length) {
      target.replaceChildren(el('span', { class: 'muted', text: 'None' }));
      return;
    }
    target.replaceChildren(el('ul', { class: 'chips' }, scopes.map((s) => el('li', { text: s }))));
  }

  function renderViewParams(params) {
    $('view-params-empty').hidden = params.length > 0;
    renderDefinitions(
      $('view-params'),
      params.map((p) => [
        p.key,
        p.secret
          ? el('span', {}, [secretText(p.value), el('span', { class: 'secret-tag', text: 'secret' })])
          : el('span', { text: String(p.value ?? '') }),
      ]),
    );
  }

  /** Fills a <dl> from [term, node] pairs, each pair in its own <div>. */
  function renderDefinitions(dl, pairs) {
    dl.replaceChildren(
      ...pairs.map(([term, value]) => el('div', {}, [el('dt', { text: term }), el('dd', {}, [value])])),
    );
  }

  function renderUrls(c) {
    const urls = c.callback_urls || {};
    setUrl('view-webhook-url', urls.webhook_url, 'Not available');
    setUrl('view-action-url', urls.action_url, 'Not available');
    setUrl('view-auth-url', urls.authentication_url, `Not used by ${authTypeLabel(c.auth_type)}`);
  }

  function setUrl(id, url, missing) {
    const code = $(id);
    code.textContent = url || missing;
    code.classList.toggle('unused', !url);
    const button = document.querySelector(`button.copy[data-copy="${id}"]`);
    button.disabled = !url;
  }

  function renderCounters(ingress) {
    const target = $('view-counters');
    if (!ingress) {
      target.replaceChildren(el('p', { class: 'muted', text: 'No counters available.' }));
      return;
    }
    const rejected = ingress.rejected || {};
    const rejectedTotal = Object.values(rejected).reduce((sum, n) => sum + Number(n || 0), 0);
    const counter = (count, what) =>
      el('li', {}, [el('span', { class: 'count', text: String(count) }), el('span', { class: 'what', text: what })]);
    const items = [
      counter(ingress.accepted || 0, 'Accepted'),
      counter(ingress.duplicates || 0, 'Duplicates'),
      counter(rejectedTotal, 'Rejected'),
    ];
    if (ingress.handshakes) items.push(counter(ingress.handshakes, 'Handshakes'));
    if (ingress.unmapped_users) items.push(counter(ingress.unmapped_users, 'Unmapped users'));
    const nodes = [el('ul', { class: 'counters' }, items)];
    const reasons = Object.entries(rejected).filter(([, n]) => n > 0);
    if (reasons.length) {
      nodes.push(
        el('p', {
          class: 'rejected-reasons',
          text: `Rejected by reason: ${reasons.map(([reason, n]) => `${reason.replace(/_/g, ' ')} ${n}`).join(', ')}`,
        }),
      );
    }
    target.replaceChildren(...nodes);
  }

  function renderEvents(res) {
    const target = $('view-events');
    if (!res.ok) {
      target.replaceChildren(el('p', { class: 'muted', text: `Events could not be loaded. ${problemText(res)}` }));
      return;
    }
    const items = Array.isArray(res.data.items) ? res.data.items.slice(0, EVENTS_SHOWN) : [];
    if (!items.length) {
      target.replaceChildren(el('p', { class: 'muted', text: 'No events yet' }));
      return;
    }
    const head = el('tr', {}, ['Received', 'Event type', 'App user', 'User'].map((h) => el('th', { scope: 'col', text: h })));
    const rows = items.map((e) =>
      el('tr', {}, [
        el('td', {}, [el('time', { datetime: e.received_at, title: formatRelative(e.received_at), text: formatLocal(e.received_at) })]),
        el('td', {}, [el('code', { text: e.event_type || '—' })]),
        el('td', { text: e.app_user_id || '—' }),
        el('td', { text: e.user_id || '—' }),
      ]),
    );
    target.replaceChildren(
      el('table', {}, [el('caption', { class: 'visually-hidden', text: 'Recent events' }), el('thead', {}, [head]), el('tbody', {}, rows)]),
    );
  }

  async function copyFrom(id) {
    const node = $(id);
    const text = node.textContent;
    try {
      if (!navigator.clipboard || !navigator.clipboard.writeText) throw new Error('no clipboard');
      await navigator.clipboard.writeText(text);
      toast('Copied');
    } catch (_) {
      // No clipboard (insecure context or refused): select it for a manual copy.
      const selection = window.getSelection();
      if (selection) selection.selectAllChildren(node);
      toast('Copying is not available here; the URL is selected: press Ctrl+C (⌘C) to copy it.');
    }
  }

  // ------------------------------------------------------------- Test

  async function testCredential(id, button) {
    const listed = findListed(id);
    // aria-busy rather than disabled: disabling the focused button would drop focus.
    button.setAttribute('aria-busy', 'true');
    const res = await api('POST', `${credentialPath(id)}/validate`);
    button.removeAttribute('aria-busy');
    if (!res.ok) {
      toast(`${listed ? listed.name : id}: ${problemText(res)}`);
      return;
    }
    const c = res.data;
    toast(`${c.name}: ${c.status}${c.status_message ? ` — ${c.status_message}` : ''}`);
    replaceRow(c);
  }

  // ------------------------------------------------------------- Delete

  function openDelete(id, opener) {
    const dialog = $('confirm-dialog');
    const c = findListed(id);
    if (!c || dialog.open) return;
    state.pendingDelete = c;
    $('confirm-text').textContent = `Delete “${c.name}”? Its secrets are destroyed and its URLs stop working.`;
    $('confirm-error').hidden = true;
    $('confirm-yes').disabled = false;
    openModal(dialog, opener);
  }

  async function confirmDelete() {
    const c = state.pendingDelete;
    if (!c) return;
    $('confirm-yes').disabled = true;
    const res = await api('DELETE', credentialPath(c.id));
    $('confirm-yes').disabled = false;
    // 404: already gone, which is what was asked.
    if (!res.ok && res.status !== 404) {
      $('confirm-error').textContent = problemText(res);
      $('confirm-error').hidden = false;
      return;
    }
    state.pendingDelete = null;
    $('confirm-dialog').close();
    toast(`Credential “${c.name}” deleted.`);
    await loadPage();
  }

  // ------------------------------------------------------------- Export

  /** Opens the Export dialog for one listed credential, or for all with `id` null. */
  function openExport(id, opener) {
    const dialog = $('export-dialog');
    const c = id === null ? { all: true } : findListed(id);
    if (!c || dialog.open) return;
    state.pendingExport = c;
    state.exportSeq += 1;
    $('export-title').textContent = c.all ? 'Export all credentials' : `Export “${c.name}”`;
    wipeExportInputs();
    hideExportError();
    setExportBusy(false);
    openModal(dialog, opener);
    $('export-passphrase').focus();
  }

  /** Clears both passphrase inputs (they are never kept anywhere else). */
  function wipeExportInputs() {
    $('export-passphrase').value = '';
    $('export-passphrase-again').value = '';
  }

  function setExportBusy(busy) {
    state.exportBusy = busy;
    // aria-busy rather than disabled: disabling the focused button would drop focus.
    if (busy) $('export-confirm').setAttribute('aria-busy', 'true');
    else $('export-confirm').removeAttribute('aria-busy');
    $('export-status').textContent = busy ? 'Sealing the file…' : '';
  }

  /** Shows `message`; with `inputId`, marks that input invalid and focuses it. */
  function showExportError(message, inputId) {
    hideExportError();
    const box = $('export-error');
    box.textContent = message;
    box.hidden = false;
    if (inputId) {
      const input = $(inputId);
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
  }

  function hideExportError() {
    const box = $('export-error');
    box.hidden = true;
    box.textContent = '';
    for (const id of ['export-passphrase', 'export-passphrase-again']) $(id).removeAttribute('aria-invalid');
  }

  /** What is wrong with the typed passphrases before asking the server, or null. */
  function exportInputProblem(passphrase, again) {
    if (passphrase !== again) return { input: 'export-passphrase-again', message: 'The passphrases differ.' };
    if (Array.from(passphrase).length < EXPORT_MIN_PASSPHRASE) {
      return {
        input: 'export-passphrase',
        message: `Use a passphrase of at least ${EXPORT_MIN_PASSPHRASE} characters; it is the only way to open the file.`,
      };
    }
    return null;
  }

  async function confirmExport() {
    const c = state.pendingExport;
    if (!c || state.exportBusy) return;
    const passphrase = $('export-passphrase').value;
    const problem = exportInputProblem(passphrase, $('export-passphrase-again').value);
    if (problem) {
      showExportError(problem.message, problem.input);
      return;
    }
    hideExportError();
    const seq = ++state.exportSeq;
    setExportBusy(true);
    const ids = c.all ? [] : [c.id];
    const res = await apiFile('POST', '/v1/credentials/export', { passphrase, ids }, EXPORT_FILENAME);
    if (seq !== state.exportSeq) return; // the dialog closed meanwhile: no download
    setExportBusy(false);
    if (!res.ok) {
      const errors = Array.isArray(res.data && res.data.errors) ? res.data.errors : [];
      const onPassphrase = errors.find((e) => e && e.field === 'passphrase' && e.message);
      if (onPassphrase) showExportError(onPassphrase.message, 'export-passphrase');
      else showExportError(problemText(res));
      return;
    }
    // Closed first: the page behind a modal dialog is inert.
    $('export-dialog').close();
    saveFile(res.blob, res.filename);
    toast(c.all ? 'Exported all credentials.' : `Exported “${c.name}”.`);
  }

  /** Enter in either passphrase input exports (the buttons are not submit buttons). */
  function onExportKeydown(event) {
    if (event.key !== 'Enter' || event.isComposing || event.defaultPrevented) return;
    if (event.shiftKey || event.ctrlKey || event.altKey || event.metaKey) return;
    if (event.target.tagName !== 'INPUT') return;
    event.preventDefault();
    confirmExport();
  }

  // ------------------------------------------------------------- Import

  const importState = { busy: false, seq: 0 };

  function openImport(opener) {
    const dialog = $('import-dialog');
    if (dialog.open) return;
    importState.seq += 1;
    resetImport();
    openModal(dialog, opener);
    $('import-file').focus();
  }

  /** Clears the file, the passphrase and every message of the dialog. */
  function resetImport() {
    $('import-file').value = '';
    $('import-passphrase').value = '';
    hideImportMessages();
    setImportBusy(false);
  }

  function hideImportMessages() {
    $('import-error').hidden = true;
    $('import-error').textContent = '';
    $('import-conflict').hidden = true;
    $('import-conflict-names').replaceChildren();
    $('import-override').hidden = true;
    $('import-create-new').hidden = true;
    $('import-confirm').hidden = false;
    for (const id of ['import-file', 'import-passphrase']) $(id).removeAttribute('aria-invalid');
  }

  function setImportBusy(busy) {
    importState.busy = busy;
    for (const id of ['import-confirm', 'import-override', 'import-create-new']) {
      if (busy) $(id).setAttribute('aria-busy', 'true');
      else $(id).removeAttribute('aria-busy');
    }
    $('import-status').textContent = busy ? 'Opening the file…' : '';
  }

  function showImportError(message, inputId) {
    hideImportMessages();
    const box = $('import-error');
    box.textContent = message;
    box.hidden = false;
    if (inputId) {
      $(inputId).setAttribute('aria-invalid', 'true');
      $(inputId).focus();
    }
  }

  /** The chosen file as base64 (the API takes the bytes that way). */
  function readAsBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ''));
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  /** Sends the import; `onConflict` is ask, override or create_new. */
  async function confirmImport(onConflict) {
    if (importState.busy) return;
    const file = $('import-file').files[0];
    if (!file) {
      showImportError('Choose the export file (.lkx) first.', 'import-file');
      return;
    }
    const passphrase = $('import-passphrase').value;
    if (!passphrase) {
      showImportError('Type the passphrase the file was exported with.', 'import-passphrase');
      return;
    }
    let encoded;
    try {
      encoded = await readAsBase64(file);
    } catch (_) {
      showImportError('The file could not be read; choose it again.', 'import-file');
      return;
    }
    const seq = ++importState.seq;
    setImportBusy(true);
    const res = await api('POST', '/v1/credentials/import', { file: encoded, passphrase, on_conflict: onConflict });
    if (seq !== importState.seq) return; // closed meanwhile
    setImportBusy(false);
    if (res.ok) {
      const imported = (res.data && res.data.imported) || [];
      $('import-dialog').close();
      toast(imported.length === 1 ? `Imported “${imported[0].name}”.` : `Imported ${imported.length} credentials.`);
      await reloadFromStart();
      return;
    }
    const code = res.data && res.data.code;
    if (code === 'name_conflict') {
      hideImportMessages();
      const names = $('import-conflict-names');
      for (const c of res.data.credentials || []) names.append(el('li', { text: c.name }));
      $('import-conflict').hidden = false;
      $('import-confirm').hidden = true;
      $('import-override').hidden = false;
      $('import-create-new').hidden = false;
      $('import-create-new').focus();
      return;
    }
    const onPassphrase = code === 'wrong_passphrase' || code === 'wrong_passphrase_or_tampered';
    showImportError(problemText(res), onPassphrase ? 'import-passphrase' : 'import-file');
  }

  function bindImportDialog() {
    const dialog = $('import-dialog');
    $('import-credential').addEventListener('click', (e) => openImport(e.currentTarget));
    $('export-all').addEventListener('click', (e) => openExport(null, e.currentTarget));
    $('import-confirm').addEventListener('click', () => confirmImport('ask'));
    $('import-override').addEventListener('click', () => confirmImport('override'));
    $('import-create-new').addEventListener('click', () => confirmImport('create_new'));
    $('import-cancel').addEventListener('click', () => dialog.close());
    $('import-file').addEventListener('change', hideImportMessages);
    $('import-passphrase').addEventListener('keydown', (event) => {
      if (event.key !== 'Enter' || event.isComposing) return;
      event.preventDefault();
      if (!$('import-confirm').hidden) confirmImport('ask');
    });
    dialog.addEventListener('close', () => {
      importState.seq += 1;
      resetImport();
      rehomeToast(dialog);
      restoreFocus(dialog);
    });
  }

  // ------------------------------------------------------------- wiring

  let searchTimer = 0;

  function bindList() {
    $('search').addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(reloadFromStart, SEARCH_DEBOUNCE_MS);
    });
    $('filter-integration').addEventListener('change', reloadFromStart);
    $('filter-status').addEventListener('change', reloadFromStart);
    $('clear-filters').addEventListener('click', () => {
      clearFilters();
      reloadFromStart();
      $('search').focus();
    });
    $('list-retry').addEventListener('click', loadPage);
    $('prev-page').addEventListener('click', () => goToPage(-1));
    $('next-page').addEventListener('click', () => goToPage(1));
    $('create-credential').addEventListener('click', (e) => openCreate(e.currentTarget));
    $('empty-create').addEventListener('click', (e) => openCreate(e.currentTarget));
    $('credentials').tBodies[0].addEventListener('click', onRowAction);
  }

  function onRowAction(event) {
    const button = event.target.closest('button[data-action]');
    if (!button || button.disabled || button.getAttribute('aria-busy') === 'true') return;
    const id = button.closest('tr').dataset.id;
    switch (button.dataset.action) {
      case 'view':
        openView(id, button);
        break;
      case 'edit':
        openEdit(id, button);
        break;
      case 'test':
        testCredential(id, button);
        break;
      case 'delete':
        openDelete(id, button);
        break;
      case 'export':
        openExport(id, button);
        break;
      default:
        break;
    }
  }

  function bindCredentialDialog() {
    const dialog = credentialDialog();
    dialog.addEventListener('close', onCredentialDialogClose);
    $('credential-form').addEventListener('submit', onFormSubmit);
    $('credential-form').addEventListener('keydown', onFormKeydown);
    $('cancel').addEventListener('click', () => dialog.close());
    $('next').addEventListener('click', goNext);
    $('back').addEventListener('click', goBack);
    $('save').addEventListener('click', () => save(true));
    $('save-unverified').addEventListener('click', () => save(false));
    $('integration-filter').addEventListener('input', () => fillIntegrationOptions());
    $('integration-filter').addEventListener('keydown', onFilterKeydown);
    $('integration').addEventListener('change', (e) => {
      clearErrors();
      selectIntegration(e.target.value);
    });
    $('auth-type').addEventListener('change', () => fillStep2(dialogState.credential));
    $('toggle-key').addEventListener('click', onToggleKey);
    $('scope-add').addEventListener('click', onAddScope);
    $('scope-new').addEventListener('keydown', onScopeKeydown);
    $('add-param').addEventListener('click', () => addParamRow().querySelector('.param-key').focus());
    $('param-rows').addEventListener('input', onParamRowsInput);
    $('param-rows').addEventListener('change', onParamRowsChange);
    $('param-rows').addEventListener('click', onParamRowsClick);
  }

  function bindViewDialog() {
    const dialog = $('view-dialog');
    $('view-close').addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', () => {
      rehomeToast(dialog);
      restoreFocus(dialog);
    });
    dialog.addEventListener('click', (event) => {
      const button = event.target.closest('button.copy[data-copy]');
      if (button && !button.disabled) copyFrom(button.dataset.copy);
    });
  }

  function bindConfirmDialog() {
    const dialog = $('confirm-dialog');
    $('confirm-yes').addEventListener('click', confirmDelete);
    $('confirm-no').addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', () => {
      state.pendingDelete = null;
      rehomeToast(dialog);
      restoreFocus(dialog);
    });
  }

  function bindExportDialog() {
    const dialog = $('export-dialog');
    $('export-confirm').addEventListener('click', confirmExport);
    $('export-cancel').addEventListener('click', () => dialog.close());
    $('export-passphrase').addEventListener('keydown', onExportKeydown);
    $('export-passphrase-again').addEventListener('keydown', onExportKeydown);
    dialog.addEventListener('close', () => {
      state.pendingExport = null;
      state.exportSeq += 1;
      wipeExportInputs();
      hideExportError();
      setExportBusy(false);
      rehomeToast(dialog);
      restoreFocus(dialog);
    });
  }

  // ------------------------------------------------------------- start-up

  function start() {
    bindList();
    bindCredentialDialog();
    bindViewDialog();
    bindConfirmDialog();
    bindExportDialog();
    bindImportDialog();
    state.integrationsReady = loadIntegrations();
    reloadFromStart();
    setInterval(refreshRelativeTimes, 60 * 1000);
  }

  start();
})();
