// Guardian recovery in the patient portal: GlucoGuard makes a new key under the patient's current
// sign-in and hands out the `Recover` EIP-712 request; `threshold` guardians sign it with their own
// wallets; the portal collects their signatures (pasted, or signed by a wallet in this browser),
// checks each one here (who signed it, once each), and relays them (POST /apps/api/recovery/complete).
// Collected signatures are kept in this browser (localStorage, per new key) so the patient can come
// back while guardians take their time; they authorise only this one key change.
import { api, apiSend, el, fmtDateTime, notice, show } from '../shared/dom.js';
import { hasWallet, signWithWallet, v4Payload } from '../shared/wallet.js';

const STORE = 'glucoguard:recovery:';

/**
 * The in-browser signature check needs ethers (about 0.5 MB): it is loaded once a recovery is under
 * way, not on every visit to the portal.
 */
let recoverTypedDataSigner;
async function loadSignatureCheck() {
  ({ recoverTypedDataSigner } = await import('../shared/eip712.js'));
}

/** The chain's refusals (IdentityRegistry custom errors) in words. */
const CHAIN_WORDS = {
  IdentityRegistryNotGuardian: 'One signature is not from a current guardian of yours, or was made for an older request. If you changed your guardians after starting, start over with a new request.',
  IdentityRegistryDuplicateGuardian: 'The same guardian signed twice; each guardian counts once.',
  IdentityRegistryInsufficientSignatures: 'Not enough guardians have signed yet.',
  IdentityRegistryExpiredSignature: 'The request has expired. Start over with a new request.',
  IdentityRegistryKeyInUse: 'The new key is already in use. Start over with a new request.',
  IdentityRegistryNoGuardians: 'You have no guardians on the ledger any more, so they cannot give you a new key.',
};

function problemWords(err) {
  const message = err?.message ?? 'unknown problem';
  const refused = /IdentityRegistry\w+/.exec(message)?.[0];
  if (refused) return `The ledger refused the signatures. ${CHAIN_WORDS[refused] ?? 'Start over with a new request.'}`;
  if (err?.status === 401) return 'Your sign-in has ended. Sign in again; the signatures collected so far are kept in this browser.';
  return message;
}

function short(address) {
  return `${address.slice(0, 6)}…${address.slice(-4)}`;
}

function loadSignatures(newKey) {
  try {
    const stored = JSON.parse(localStorage.getItem(STORE + newKey) ?? '[]');
    return Array.isArray(stored) ? stored.filter((s) => typeof s === 'string') : [];
  } catch {
    return [];
  }
}

function saveSignatures(newKey, signatures) {
  try {
    localStorage.setItem(STORE + newKey, JSON.stringify(signatures));
  } catch {
    // Private windows may refuse storage: the signatures then last as long as this page.
  }
}

/**
 * The "Get a new key with your guardians" part of Key safety. `info` is /apps/api/key-safety;
 * `nameOf(guardian)` names a guardian; `say` writes the page's status line; `reload()` re-renders
 * Key safety (after a recovery, with the new key) and returns when it is on screen.
 */
export async function recoverySection({ client, info, nameOf, say, reload, recovered }) {
  const box = el('div', { id: 'recovery-body' });
  const guardians = info.recovery.guardians.map((g) => ({ ...g, name: nameOf(g) }));
  const threshold = info.recovery.threshold;
  const title = el('h3', { id: 'recovery-title', tabindex: -1 }, 'Get a new key with your guardians');

  function guardianOf(address) {
    return guardians.find((g) => g.address.toLowerCase() === address.toLowerCase());
  }

  async function start() {
    say('Starting a recovery…');
    try {
      const started = await apiSend(client, '/apps/api/recovery', 'POST');
      await loadSignatureCheck();
      render({ newKey: started.newKey, threshold: started.threshold, typedData: started.typedData });
      say(`Recovery started. ${started.threshold} of your guardians must now sign the request.`);
      title.focus();
    } catch (err) {
      say('');
      show(box, title, notice('error', 'The recovery could not be started.', problemWords(err)), intro());
      box.querySelector('#recovery-start')?.focus();
    }
  }

  function intro() {
    const names = guardians.map((g) => g.name).join(', ');
    return [
      el('p', {}, 'Use this if your key is lost, or locked by a password reset and you have no recovery code. This is what happens:'),
      el('ol', { id: 'recovery-steps' },
        el('li', {}, 'GlucoGuard makes a new key for you, locked with the password you signed in with today.'),
        el('li', {}, `You send a signing request to your guardians (${names}). ${threshold} of them must sign it with their own wallet within 24 hours.`),
        el('li', {}, 'You paste each signature they send back here, or a guardian signs on this computer with their wallet.'),
        el('li', {}, `When ${threshold} have signed, the ledger replaces your old key with the new one. Permissions you already gave stay as they are; from then on your new key signs.`)),
      el('p', {}, el('button', { type: 'button', id: 'recovery-start', onclick: () => void start() }, 'Start a recovery')),
    ];
  }

  /** A recovery waiting for signatures: the request, the signatures so far, and how to add and finish. */
  function render(pending, problem) {
    const { newKey, typedData } = pending;
    const needed = pending.threshold;
    const signatures = [];
    const signers = [];
    for (const signature of loadSignatures(newKey)) {
      try {
        const signer = recoverTypedDataSigner(typedData, signature);
        if (guardianOf(signer) && !signers.includes(signer)) {
          signatures.push(signature);
          signers.push(signer);
        }
      } catch {
        // A stored signature that no longer checks out is dropped.
      }
    }
    const deadline = new Date(Number(typedData.message.deadline) * 1000);
    const expired = deadline.getTime() <= Date.now();
    const count = signers.length;
    const progressText = `${count} of ${needed} guardian signatures collected.${count >= needed ? ' That is enough: you can get your new key.' : ''}`;
    const request = JSON.stringify(JSON.parse(v4Payload(typedData)), null, 2);
    const signatureResult = el('div', { id: 'recovery-signature-result', 'aria-live': 'polite' }, problem ?? null);
    const copyResult = el('span', { id: 'recovery-copy-result', 'aria-live': 'polite' });

    const requestBox = el('textarea', { id: 'recovery-request', readonly: true, rows: 8, spellcheck: 'false', 'aria-describedby': 'recovery-request-help' }, request);
    const copy = el('button', { type: 'button', class: 'secondary', id: 'recovery-copy' }, 'Copy the signing request');
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(request);
        copyResult.textContent = ' Copied. Paste it into a message to your guardians.';
      } catch {
        requestBox.focus();
        requestBox.select();
        copyResult.textContent = ' The request is selected: press Ctrl+C (or ⌘+C) to copy it.';
      }
    });

    function add(signature, where) {
      if (expired) return fail('This request has expired, so no signature of it counts any more. Start over with a new request.', where);
      let signer;
      try {
        signer = recoverTypedDataSigner(typedData, signature);
      } catch (err) {
        return fail(`That is not a signature this request can use. ${err.message}`, where);
      }
      const guardian = guardianOf(signer);
      if (!guardian) {
        return fail(`This signature is not from one of your guardians for this request: it was made by the key ${short(signer)}. `
          + 'Ask your guardian to sign the request above exactly as it is; a signature of another request, or by another key, does not count.', where);
      }
      if (signers.includes(guardian.address)) {
        return fail(`${guardian.name} has already signed. Each guardian counts once: ask another of your guardians.`, where);
      }
      saveSignatures(newKey, [...signatures, signature]);
      render(pending);
      const now = count + 1;
      say(`${guardian.name} has signed: ${now} of ${needed} signatures.${now >= needed ? ' You can now get your new key.' : ''}`);
      (now >= needed ? box.querySelector('#recovery-complete') : box.querySelector('#recovery-signature'))?.focus();
      return true;
    }

    function fail(text, where) {
      show(signatureResult, notice('error', 'The signature was not added.', text));
      where?.focus();
      return false;
    }

    const input = el('textarea', { id: 'recovery-signature', name: 'signature', rows: 2, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'recovery-signature-help' });
    const form = el('form', { id: 'recovery-signature-form' },
      el('p', {}, el('label', { for: 'recovery-signature' }, 'A guardian\'s signature'), el('br'), input),
      el('p', { id: 'recovery-signature-help' }, 'Starts with 0x, 132 characters. It is checked here before it is added.'),
      el('button', { type: 'submit' }, 'Add this signature'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) fail('Paste the signature a guardian sent you first.', input);
      else add(value, input);
    });

    const walletButton = hasWallet()
      ? el('button', { type: 'button', class: 'secondary', id: 'recovery-wallet-sign' }, 'A guardian signs with the wallet in this browser')
      : null;
    walletButton?.addEventListener('click', async () => {
      say('Waiting for the guardian\'s wallet…');
      try {
        const accounts = await window.ethereum.request({ method: 'eth_requestAccounts' });
        const account = accounts.find((a) => guardianOf(a) && !signers.includes(guardianOf(a).address));
        if (!account) {
          say('');
          fail('The wallet in this browser offered no guardian who has not signed yet. The guardian can sign in their own wallet and send you the signature instead.', walletButton);
          return;
        }
        const signature = await signWithWallet(typedData, account);
        say('');
        add(signature, walletButton);
      } catch (err) {
        say('');
        fail(`The wallet did not sign (${err?.message ?? 'refused'}). Nothing was added.`, walletButton);
      }
    });

    const finishResult = el('div', { id: 'recovery-complete-result', 'aria-live': 'polite' });
    const finish = el('button', { type: 'button', id: 'recovery-complete', 'aria-describedby': 'recovery-progress-text' }, 'Get my new key');
    finish.addEventListener('click', async () => {
      if (expired) {
        show(finishResult, notice('error', 'This request has expired.', 'Start over with a new request and ask your guardians to sign that one.'));
        restart.focus();
        return;
      }
      if (count < needed) {
        show(finishResult, notice('error', `${needed - count} more guardian ${needed - count === 1 ? 'signature is' : 'signatures are'} needed first.`));
        input.focus();
        return;
      }
      finish.disabled = true;
      say('Asking the ledger to replace your key…');
      try {
        const done = await apiSend(client, '/apps/api/recovery/complete', 'POST', { signatures });
        try { localStorage.removeItem(STORE + newKey); } catch { /* nothing kept */ }
        await reload(done.address);
      } catch (err) {
        say('');
        show(finishResult, notice('error', 'Your key was not replaced.', problemWords(err)));
        finish.disabled = false;
        finish.focus();
      }
    });

    const restart = el('button', { type: 'button', class: 'secondary', id: 'recovery-restart', 'aria-describedby': 'recovery-restart-help' }, 'Start over with a new request');
    restart.addEventListener('click', () => {
      try { localStorage.removeItem(STORE + newKey); } catch { /* nothing kept */ }
      void start();
    });

    show(box, title,
      expired
        ? notice('warn', 'This recovery request has expired.', 'Signatures of it no longer count. Start over with a new request.')
        : el('p', {}, `Recovery started. Your guardians must sign before ${fmtDateTime(deadline.toISOString())}. Your new key will be ${short(newKey)}, `
          + 'locked with the password you signed in with when the request was made.'),
      el('p', { id: 'recovery-progress-text', 'data-recovery-count': count, 'data-recovery-needed': needed }, el('strong', {}, progressText)),
      el('progress', { id: 'recovery-progress', max: needed, value: Math.min(count, needed), 'aria-labelledby': 'recovery-progress-text' }),
      el('ul', { class: 'backup', id: 'recovery-guardians', 'aria-label': 'Your guardians' }, guardians.map((g) => {
        const signed = signers.includes(g.address);
        return el('li', { 'data-guardian': g.address, 'data-signed': String(signed) }, signed ? `✔ ${g.name} has signed.` : `… ${g.name} has not signed yet.`);
      })),
      el('h4', {}, '1. Send the signing request to your guardians'),
      el('p', { id: 'recovery-request-help' }, 'Each guardian signs this request with their own wallet: any wallet that signs EIP-712 typed data (eth_signTypedData_v4). '
        + 'It only says which new key replaces yours; it holds none of your health data.'),
      el('p', {}, el('label', { for: 'recovery-request' }, 'Signing request'), el('br'), requestBox),
      el('p', {}, copy, copyResult),
      el('h4', {}, '2. Add your guardians\' signatures'),
      form, walletButton ? el('p', {}, walletButton) : null, signatureResult,
      el('h4', {}, '3. Get your new key'),
      el('p', {}, finish), finishResult,
      el('p', { id: 'recovery-restart-help' }, 'Starting over makes a new request, with a new key locked with the password you signed in with today: '
        + 'do this if your password was reset after this request was made. Signatures of this request will no longer count.'),
      el('p', {}, restart));
  }

  if (recovered) {
    show(box, title, el('div', { id: 'recovery-done', tabindex: -1 }, notice('ok', 'Your new key is in use.',
      `The ledger replaced your old key with the new one (${short(recovered)}), locked with your current password. `
      + 'Your old key can no longer sign anything for you. Permissions you already gave stay as they are.')));
    return box;
  }
  let pending = null;
  let problem;
  if (info.recovery.waiting) {
    try {
      pending = (await api(client, '/apps/api/recovery')).recovery;
      if (pending) await loadSignatureCheck();
    } catch (err) {
      pending = null;
      problem = notice('error', 'The recovery waiting for signatures could not be loaded.', problemWords(err));
    }
  }
  if (pending) render(pending);
  else show(box, title, problem ?? null, intro());
  return box;
}
